// The generated direct codec (init(cMessage:) and makeC(), straight to and
// from protobuf-c's structs) against the DynamicMessage path it replaced on
// the binary hot path: same bytes out, same messages in, for every valid
// corpus spec and for hand-built messages using every kind of field.
import LmctfyProto
import Testing

/// Encodes `m` both ways and decodes the bytes both ways.
private func expectSameBothWays<M: ProtoMessage>(_ m: M, _ what: String = "") throws {
    let direct = try m.serializedBytes()
    let dynamic = try m.dynamic.serializedBytes()
    #expect(direct == dynamic, "\(M.self) \(what): encoders differ")
    try expectSameDecoding(M.self, dynamic, what)
}

private func expectSameDecoding<M: ProtoMessage>(_ type: M.Type, _ bytes: [UInt8], _ what: String = "") throws {
    let viaDynamic = M(dynamic: try DynamicMessage(serializedBytes: bytes, as: M.protoDescriptor))
    let direct = try M(serializedBytes: bytes)
    #expect(direct == viaDynamic, "\(M.self) \(what): decoders differ")
}

@Suite struct DirectCodecTests {
    @Test(arguments: CorpusCase.load("valid").filter { $0.type == "containers.lmctfy.ContainerSpec" })
    func everyCorpusSpecEncodesAndDecodesAsBefore(_ c: CorpusCase) throws {
        let spec = ContainerSpec(dynamic: try TextFormat.parse(c.text, as: ContainerSpec.protoDescriptor))
        try expectSameBothWays(spec, c.name)
    }

    @Test func everyKindOfField() throws {
        // Strings, bytes, repeated strings, enums, uint32s (Hello); nested
        // and repeated messages, int64, bool, enums (ContainerSpec).
        try expectSameBothWays(Hello(stage: .helloOffer, minVersion: 1, maxVersion: 2, peerName: "ünï", capabilities: ["a", "", "c"],
                                     keyId: "k", nonce: Array(0..<32), proof: [], maxFrameBytes: 0, maxStreams: .max))
        try expectSameBothWays(Hello())
        try expectSameBothWays(Frame(kind: .frameGoaway, streamId: 3, goaway: GoAway(reason: .goawayNormal, message: "", lastStreamId: 0)))
        let spec = try ContainerSpec(textFormat: """
            owner: 0 owner_group: 4294967294 children_limit: 5
            cpu { limit: 500 max_limit: 1000 scheduling_latency: PRIORITY mask { data: 1 data: 18446744073709551615 } }
            memory { limit: -1 reservation: 0 max_limit: 9223372036854775807 eviction_priority: -3 hugetlbfs_path: "" }
            pids { limit: 20 }
            """)
        try expectSameBothWays(spec)
    }

    @Test func aMissingRequiredFieldIsRefusedNamingItAsBefore() throws {
        // ContainerSnapshot -> last_stats -> cpu -> histograms[i] -> stat[j]:
        // the required fields sit four messages deep, behind repeated ones.
        let ok = HistogramMap(type: .serve, stat: [HistogramMap.Bucket(bucket: 1, value: 2)])
        var snapshot = ContainerSnapshot(name: "/a", lastStats: ContainerStats(cpu: CpuStats(histograms: [ok, ok])))
        try expectSameBothWays(snapshot, "all required fields set")
        let cases: [(HistogramMap, String)] = [
            (HistogramMap(stat: []), "last_stats.cpu.histograms[1].type"),
            (HistogramMap(type: .sleep, stat: [HistogramMap.Bucket(bucket: 1, value: 2), HistogramMap.Bucket(value: 3)]),
             "last_stats.cpu.histograms[1].stat[1].bucket"),
            (HistogramMap(type: .sleep, stat: [HistogramMap.Bucket(bucket: 4)]), "last_stats.cpu.histograms[1].stat[0].value"),
        ]
        for (bad, path) in cases {
            snapshot.lastStats?.cpu?.histograms = [ok, bad]
            #expect(snapshot.dynamic.firstMissingRequired() == path)
            for encode in [{ try snapshot.serializedBytes() }, { try snapshot.dynamic.serializedBytes() }] {
                #expect(throws: ProtoError.self) { _ = try encode() }
                do { _ = try encode() } catch {
                    #expect("\(error)".contains("required field \(path) is not set"), "\(error)")
                }
            }
        }
    }

    @Test func unknownFieldsAndEnumNumbersDecodeAsBefore() throws {
        // Hello.stage = 99 (no such stage), an unknown field 15, peer_name.
        try expectSameDecoding(Hello.self, [0x08, 0x63, 0x78, 0x05, 0x2a, 0x01, 0x78])
        // Frame.kind = 2, status { code: 7, message: "x" }, unknown field 20.
        try expectSameDecoding(Frame.self, [0x08, 0x02, 0x32, 0x05, 0x08, 0x07, 0x12, 0x01, 0x78, 0xa0, 0x01, 0x01])
        // Nothing at all.
        try expectSameDecoding(ContainerSpec.self, [])
    }

    @Test func malformedBytesAreAnErrorBothWays() {
        for bytes: [UInt8] in [[0x08], [0x2a, 0x05, 0x61], [0xff, 0xff, 0xff]] {
            #expect(throws: ProtoError.self) { try Hello(serializedBytes: bytes) }
            #expect(throws: ProtoError.self) { try DynamicMessage(serializedBytes: bytes, as: Hello.protoDescriptor) }
        }
    }
}
