// Who may call what: the role of an authenticated peer from the role
// bindings of a config (the agent's and the controller's alike).
import LmctfyProto

/// Role bindings and the group allowed on a Unix socket.
public struct RolePolicy: Sendable {
    public var bindings: [RoleBinding]
    public var allowedGid: UInt32?

    public init(bindings: [RoleBinding], allowedGid: UInt32? = nil) {
        self.bindings = bindings
        self.allowedGid = allowedGid
    }

    /// Who may connect on a Unix socket: root, every uid and gid a binding
    /// names, and the allowed group.
    public var unixPeerPolicy: UnixPeerPolicy {
        var gids = Set(bindings.flatMap(\.gid))
        if let allowedGid { gids.insert(allowedGid) }
        return UnixPeerPolicy(allowedUids: Set(bindings.flatMap(\.uid)), allowedGids: gids)
    }

    /// The role of an authenticated peer: the first binding that names its
    /// uid, gid (primary or supplementary), key id, or (TLS) one of its
    /// certificate's subject OUs or subjectAltName URIs; otherwise root is
    /// admin and everyone else admitted (allowed_group on the Unix socket, any
    /// key of key_file or any certificate of the CA on TCP) is a reader.
    public func role(for peer: PeerInfo) -> AgentRole {
        if let bound = boundRole(for: peer) { return bound }
        if let creds = peer.credentials, creds.uid == 0 { return .agentRoleAdmin }
        return .agentRoleReader
    }

    /// The role the first binding that names the peer gives it; nil: no
    /// binding names it.
    public func boundRole(for peer: PeerInfo) -> AgentRole? {
        for b in bindings {
            if let creds = peer.credentials {
                if b.uid.contains(creds.uid) || b.gid.contains(creds.gid) || creds.groups.contains(where: b.gid.contains) {
                    return b.role ?? .agentRoleReader
                }
            }
            if let key = peer.keyId, b.keyId.contains(key) { return b.role ?? .agentRoleReader }
            if let cert = peer.certificate,
               cert.organizationalUnits.contains(where: b.certificateOu.contains) || cert.uris.contains(where: b.certificateUri.contains) {
                return b.role ?? .agentRoleReader
            }
        }
        return nil
    }
}
