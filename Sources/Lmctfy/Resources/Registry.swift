// The resource handlers lmctfy knows, by kind.
enum ResourceHandlers {
    static let all: [ResourceKind: any ResourceHandler] = {
        var map: [ResourceKind: any ResourceHandler] = [:]
        for h: any ResourceHandler in [CpuHandler(), MemoryHandler(), BlockIoHandler(), DeviceHandler(), PidsHandler()] {
            map[h.kind] = h
        }
        return map
    }()
}
