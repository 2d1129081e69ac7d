import LmctfyProto
import Testing

@Suite struct JSONTests {
    @Test func proto3Mapping() throws {
        let spec = try ContainerSpec(textFormat: """
            owner_group: 5 cpu { limit: 500 scheduling_latency: PREMIER mask { data: [1, 18446744073709551615] } }
            memory { eviction_priority: -3 kmem_charge_usage: true hugetlbfs_path: "a\\"b\\n" }
            virtual_host { init { init_argv: [] } }
            """)
        #expect(spec.jsonString() == #"{"cpu":{"schedulingLatency":"PREMIER","limit":"500","mask":{"data":["1","18446744073709551615"]}},"memory":{"evictionPriority":-3,"hugetlbfsPath":"a\"b\n","kmemChargeUsage":true},"ownerGroup":"5","virtualHost":{"init":{}}}"#)
    }

    @Test func prettyPrinting() throws {
        let e = try EventSpec(textFormat: "memory_threshold { usage: 52428800 }")
        #expect(e.jsonString(pretty: true) == """
            {
              "memoryThreshold": {
                "usage": "52428800"
              }
            }
            """)
        #expect(EventSpec().jsonString(pretty: true) == "{}")
    }

    @Test func controlCharactersAreEscaped() {
        #expect(JSONFormat.quote("a\u{01}\u{1F}é") == "\"a\\u0001\\u001fé\"")
    }
}
