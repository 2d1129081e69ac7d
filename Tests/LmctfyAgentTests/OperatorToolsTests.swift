// Operator tooling (issue #16): the systemd units (systemd-analyze verify),
// `tools/setup --install` into a staging root, the man pages (mandoc lint,
// man --warnings, and drift: every command, flag and config field the code
// has is in its page, and every flag a page names is one the code takes),
// and the bash and zsh completion (compgen against the real command table,
// container names from `lmctfy list` of real containers).
import Glibc
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing
@testable import LmctfyCommands
@testable import LmctlCommands

/// The repository (this file is Tests/LmctfyAgentTests/OperatorToolsTests.swift).
let repoRoot: String = {
    var path = #filePath
    for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path
}()

/// The first executable named `name` on PATH, or nil.
func onPath(_ name: String) -> String? {
    for dir in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        if access(dir + "/" + name, X_OK) == 0 { return dir + "/" + name }
    }
    return nil
}

/// The directory of the built binaries, absolute.
func builtBinDirectory() -> String {
    var dir = String(builtTool("lmctfy")[..<builtTool("lmctfy").lastIndex(of: "/")!])
    if !dir.hasPrefix("/") {
        var buf = [CChar](repeating: 0, count: 4096)
        dir = String(cString: getcwd(&buf, buf.count)) + "/" + dir
    }
    return dir
}

/// Runs `argv` with `environment` added ("K=V"), capturing its output.
func run(_ argv: [String], environment: [String] = []) throws -> ChildResult {
    try TestProcess.capture(["/usr/bin/env"] + environment + argv)
}

/// A fresh directory under /tmp, removed by the caller.
func scratchDirectory(_ label: String) throws -> String {
    let dir = "/tmp/lmctfy-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Sys.mkdir(dir, mode: 0o755)
    return dir
}

/// Every command path of lmctfy's dispatcher ("list containers", ...).
func commandPaths(_ menu: Menu = CommandTree.root, _ prefix: [String] = []) -> [[String]] {
    menu.children.flatMap { child -> [[String]] in
        switch child {
        case .leaf(let l): [prefix + [l.name]]
        case .menu(let m): commandPaths(m, prefix + [m.name])
        }
    }
}

/// Every menu of the dispatcher with the words below it ([] is the top).
func menus(_ menu: Menu = CommandTree.root, _ prefix: [String] = []) -> [([String], [String])] {
    var out = [(prefix, menu.children.map(\.name))]
    for case .menu(let m) in menu.children { out += menus(m, prefix + [m.name]) }
    return out
}

/// The flags lmctfy's help lists (`-b`, `--lmctfy_binary`, ...): the words
/// of its flag table that start with "-".
func helpFlags() -> [String] {
    let table = LmctfyCLI.globalHelp.split(separator: "\n").filter { $0.hasPrefix("  -") }
    var flags: [String] = []
    for line in table {
        for word in line.split(separator: " ") where word.hasPrefix("-") {
            let flag = String(word.prefix { $0 != "=" && $0 != "," })
            if !flags.contains(flag) { flags.append(flag) }
        }
    }
    return flags
}

@Suite(.enabled(if: onPath("systemd-analyze") != nil,
                "SKIPPED LOUDLY: systemd-analyze is not installed (Debian package systemd): the units are not verified"))
struct SystemdUnitTests {
    static let units = ["lmctfy-agent.service", "lmctfy-agent.socket", "lmctfy-controller.service"]

    /// The units as written, with /usr/local/bin moved to the built binaries
    /// (verify checks that every Exec binary exists) and the man pages
    /// staged where `man` finds them (verify checks Documentation=man:).
    @Test func unitsPassSystemdAnalyzeVerify() throws {
        let dir = try scratchDirectory("units")
        defer { _ = removeTree(dir) }
        let bin = builtBinDirectory()
        for unit in Self.units {
            let text = try Sys.readFile(repoRoot + "/tools/systemd/" + unit)
            try Sys.createFile(dir + "/" + unit, text.replacingOccurrences(of: "/usr/local/bin/", with: bin + "/"))
        }
        try stageManPages(into: dir + "/man")
        let r = try run(["systemd-analyze", "verify"] + Self.units.map { dir + "/" + $0 }, environment: ["MANPATH=\(dir)/man"])
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == 0 && err.isEmpty, "systemd-analyze verify: \(r.status)\n\(err)")
    }

    /// What the brief asks of the units: notify, a restart policy, the
    /// agent's delegated subtree, and containers that outlive the agent.
    @Test func unitsSayWhatTheyMust() throws {
        let agent = try Sys.readFile(repoRoot + "/tools/systemd/lmctfy-agent.service")
        for line in ["Type=notify", "Restart=on-failure", "RestartPreventExitStatus=3", "Delegate=yes", "KillMode=process",
                     "ExecStart=/usr/local/bin/lmctfy-agent --config /etc/lmctfy/agent.conf", "WantedBy=multi-user.target"] {
            #expect(agent.split(separator: "\n").contains(Substring(line)), "lmctfy-agent.service lacks \(line)")
        }
        // The socket unit's path is the example config's unix_socket_path.
        let socket = try Sys.readFile(repoRoot + "/tools/systemd/lmctfy-agent.socket")
        let config = try Sys.readFile(repoRoot + "/agent-config/agent.conf")
        #expect(socket.split(separator: "\n").contains("ListenStream=/run/lmctfy/agent.sock"))
        #expect(config.split(separator: "\n").contains("unix_socket_path: \"/run/lmctfy/agent.sock\""))
        let controller = try Sys.readFile(repoRoot + "/tools/systemd/lmctfy-controller.service")
        for line in ["Type=notify", "Restart=on-failure",
                     "ExecStart=/usr/local/bin/lmctfy-controller --config /etc/lmctfy/controller.conf"] {
            #expect(controller.split(separator: "\n").contains(Substring(line)), "lmctfy-controller.service lacks \(line)")
        }
    }

    /// A unit with a mistake fails verify: the test above can fail.
    @Test func aBrokenUnitFailsVerify() throws {
        let dir = try scratchDirectory("units-bad")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/bad.service", "[Service]\nType=notify\nExecStart=relative-binary\n")
        let r = try run(["systemd-analyze", "verify", dir + "/bad.service"], environment: ["MANPATH=\(dir)"])
        #expect(r.status != 0)
    }
}

/// Copies docs/man/NAME.SECTION to DIR/manSECTION/.
func stageManPages(into dir: String) throws {
    for page in try Sys.subdirectoriesAndFiles(repoRoot + "/docs/man") {
        guard let dot = page.lastIndex(of: "."), let section = Int(page[page.index(after: dot)...]) else { continue }
        let sub = dir + "/man\(section)"
        if !Sys.isDirectory(dir) { try Sys.mkdir(dir, mode: 0o755) }
        if !Sys.isDirectory(sub) { try Sys.mkdir(sub, mode: 0o755) }
        try Sys.createFile(sub + "/" + page, try Sys.readFile(repoRoot + "/docs/man/" + page))
    }
}

@Suite struct SetupInstallTests {
    /// `tools/setup --install` with DESTDIR: binaries, units, pages,
    /// completion and configs land where the README says; an operator's
    /// edited config survives a second install.
    @Test func installPlacesEverythingUnderDestdir() throws {
        let dest = try scratchDirectory("destdir")
        defer { _ = removeTree(dest) }
        let bin = builtBinDirectory()
        let env = ["DESTDIR=\(dest)", "LMCTFY_BIN=\(bin)"]
        let r = try run(["bash", repoRoot + "/tools/setup", "--install"], environment: env)
        #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        for tool in ["lmctfy", "lmctl", "lmctfy-agent", "lmctfy-controller"] {
            #expect(access(dest + "/usr/local/bin/" + tool, X_OK) == 0, "\(tool) not installed")
        }
        for unit in SystemdUnitTests.units {
            let installed = try Sys.readFile(dest + "/etc/systemd/system/" + unit)
            #expect(installed == (try Sys.readFile(repoRoot + "/tools/systemd/" + unit)), "\(unit) changed on the way")
        }
        for page in ["man1/lmctfy.1", "man1/lmctl.1", "man5/lmctfy-agent.conf.5", "man8/lmctfy-agent.8", "man8/lmctfy-controller.8"] {
            #expect(Sys.exists(dest + "/usr/local/share/man/" + page), "\(page) not installed")
        }
        #expect(Sys.exists(dest + "/usr/local/share/bash-completion/completions/lmctfy"))
        #expect(Sys.exists(dest + "/usr/local/share/bash-completion/completions/lmctl"))
        #expect(Sys.exists(dest + "/usr/local/share/zsh/site-functions/_lmctfy"))
        #expect(try Sys.readFile(dest + "/etc/lmctfy/agent.conf") == (try Sys.readFile(repoRoot + "/agent-config/agent.conf")))

        // Again, over an edited config: the config is kept.
        try Sys.createFile(dest + "/etc/lmctfy/agent.conf", "log_level: LOG_DEBUG\n")
        let again = try run(["bash", repoRoot + "/tools/setup", "--install"], environment: env)
        #expect(again.status == 0)
        #expect(try Sys.readFile(dest + "/etc/lmctfy/agent.conf") == "log_level: LOG_DEBUG\n")

        // Another PREFIX: the units name its bin directory.
        let r2 = try run(["bash", repoRoot + "/tools/setup", "--install"], environment: env + ["PREFIX=/opt/lmctfy"])
        #expect(r2.status == 0)
        let unit = try Sys.readFile(dest + "/etc/systemd/system/lmctfy-agent.service")
        #expect(unit.contains("ExecStart=/opt/lmctfy/bin/lmctfy-agent "))
        #expect(!unit.split(separator: "\n").contains { $0.hasPrefix("Exec") && $0.contains("/usr/local/bin") })
    }

    /// A wrong argument or missing binaries: an error, and nothing installed.
    @Test func badInvocationsInstallNothing() throws {
        let dest = try scratchDirectory("destdir-bad")
        defer { _ = removeTree(dest) }
        let bad = try run(["bash", repoRoot + "/tools/setup", "--install", "extra"], environment: ["DESTDIR=\(dest)", "LMCTFY_BIN=/nonexistent"])
        #expect(bad.status == 3)
        let unknown = try run(["bash", repoRoot + "/tools/setup", "--instal"], environment: ["DESTDIR=\(dest)"])
        #expect(unknown.status == 3)
        let missing = try run(["bash", repoRoot + "/tools/setup", "--install"], environment: ["DESTDIR=\(dest)", "LMCTFY_BIN=\(dest)/nothing"])
        #expect(missing.status == 1)
        #expect(String(decoding: missing.stderr, as: UTF8.self).contains("is missing"))
        let left = try Sys.subdirectoriesAndFiles(dest)
        #expect(left.isEmpty, "something was installed: \(left)")
    }
}

@Suite struct ManPageTests {
    static let pages = ["lmctfy.1", "lmctl.1", "lmctfy-agent.conf.5", "lmctfy-agent.8", "lmctfy-controller.8"]

    static func page(_ name: String) throws -> String { try Sys.readFile(repoRoot + "/docs/man/" + name) }

    @Test(.enabled(if: onPath("mandoc") != nil, "SKIPPED LOUDLY: mandoc is not installed (tools/deps.sh installs it)"))
    func everyPageLintsClean() throws {
        #expect(try Sys.subdirectoriesAndFiles(repoRoot + "/docs/man").sorted() == Self.pages.sorted())
        for page in Self.pages {
            let r = try run(["mandoc", "-T", "lint", "-W", "warning", repoRoot + "/docs/man/" + page])
            #expect(r.status == 0, "\(page): \(String(decoding: r.stdout + r.stderr, as: UTF8.self))")
        }
        // And the lint can fail.
        let dir = try scratchDirectory("man-bad")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/bad.1", ".Dd November 30, 2026\n.Dt BAD 1\n.Os\n.Sh DESCRIPTION\n.Bl -tag\n.It x\n")
        #expect(try run(["mandoc", "-T", "lint", "-W", "warning", dir + "/bad.1"]).status != 0)
    }

    @Test(.enabled(if: onPath("man") != nil, "SKIPPED LOUDLY: man (man-db) is not installed"))
    func manRendersEveryPageWithoutWarnings() throws {
        for page in Self.pages {
            let r = try run(["man", "--warnings", "-l", repoRoot + "/docs/man/" + page], environment: ["MANWIDTH=80", "MANPAGER=cat", "PAGER=cat"])
            let err = String(decoding: r.stderr, as: UTF8.self)
            #expect(r.status == 0 && err.isEmpty, "\(page): \(err)")
            #expect(r.stdout.count > 1000, "\(page) rendered to almost nothing")
        }
    }

    /// Every command of the dispatcher is an item of lmctfy(1) and named in
    /// lmctl(1); every item of lmctfy(1)'s COMMANDS is a command.
    @Test func lmctfyPageHasEveryCommandAndNoOther() throws {
        let page = try Self.page("lmctfy.1")
        let lmctl = try Self.page("lmctl.1")
        let paths = commandPaths().map { $0.joined(separator: " ") }
        for path in paths {
            #expect(page.contains("\n.It Cm \(path)"), "lmctfy.1 does not describe `lmctfy \(path)`")
            #expect(lmctl.contains(path), "lmctl.1 does not list `\(path)`")
        }
        let section = page.components(separatedBy: ".Sh COMMANDS")[1].components(separatedBy: ".Sh ")[0]
        let items = section.split(separator: "\n").filter { $0.hasPrefix(".It Cm ") }.map { line in
            line.dropFirst(7).split(separator: " ").prefix { !$0.hasPrefix("O") && !$0.hasPrefix("Ar") && !$0.hasPrefix("Fl") }
                .joined(separator: " ")
        }
        #expect(Set(items) == Set(paths), "items that are not commands: \(Set(items).subtracting(paths))")
    }

    /// Every flag lmctfy's help lists is in lmctfy(1), and every flag the
    /// page names is one the dispatcher takes.
    @Test func lmctfyPageHasEveryFlagAndNoOther() throws {
        let page = try Self.page("lmctfy.1")
        let flags = helpFlags()
        #expect(flags.count >= 15, "the help's flag table was not found: \(flags)")
        func mdoc(_ flag: String) -> String { "Fl " + flag.dropFirst().replacingOccurrences(of: "-", with: "\\-") }
        for flag in flags {
            #expect(page.contains(mdoc(flag)), "lmctfy.1 does not describe \(flag)")
        }
        let section = page.components(separatedBy: ".Sh FLAGS")[1].components(separatedBy: ".Sh ")[0]
        var named = Set<String>()
        for line in section.split(separator: "\n") {
            let words = line.split(separator: " ")
            for (i, w) in words.enumerated() where w == "Fl" && i + 1 < words.count {
                named.insert("-" + words[i + 1].replacingOccurrences(of: "\\-", with: "-"))
            }
        }
        for flag in named where flag != "--" {
            var f = Flags()
            // Taken: parsed, or refused for its value ("json" is no
            // descriptor, path or number), never as an unknown flag.
            do {
                _ = try f.parse([flag, "json"], at: 0)
            } catch {
                #expect(!error.message.hasPrefix("Unknown flag"), "lmctfy.1 names \(flag), which lmctfy does not take")
            }
        }
    }

    /// lmctl(1): lmctl's own flags and verbs.
    @Test func lmctlPageHasItsOwnFlagsAndVerbs() throws {
        let page = try Self.page("lmctl.1")
        for flag in LmctlCLI.ownFlags {
            #expect(page.contains(".It Fl " + flag.dropFirst().replacingOccurrences(of: "-", with: "\\-")), "lmctl.1 does not describe \(flag)")
        }
        for verb in LmctlCLI.ownVerbs {
            #expect(page.contains(".It Cm \(verb)"), "lmctl.1 does not describe `lmctl \(verb)`")
        }
    }

    /// lmctfy-agent.conf(5): every field of AgentConfig and of the messages
    /// it holds.
    @Test func agentConfPageHasEveryField() throws {
        let page = try Self.page("lmctfy-agent.conf.5")
        var seen = Set<String>()
        func check(_ d: MessageDescriptor) {
            guard seen.insert(d.fullName).inserted else { return }
            for f in d.fields {
                #expect(page.contains("Cm \(f.name)\n") || page.contains("Cm \(f.name) ,"),
                        "lmctfy-agent.conf.5 does not describe \(d.fullName).\(f.name)")
                if case .message(let sub) = f.type { check(sub) }
            }
        }
        check(AgentConfig.protoDescriptor)
        #expect(seen.count >= 5)
    }

    /// The daemons' pages name every option their usage does.
    @Test func daemonPagesHaveEveryOption() throws {
        for page in ["lmctfy-agent.8", "lmctfy-controller.8"] {
            let text = try Self.page(page)
            for option in ["--config", "--check-config", "--log-level", "--help"] {
                #expect(text.contains("Fl " + option.dropFirst().replacingOccurrences(of: "-", with: "\\-")), "\(page) lacks \(option)")
            }
            #expect(text.contains("NOTIFY_SOCKET"))
        }
    }
}

/// The completion script sourced in a shell, asked as the shell would ask:
/// COMP_WORDS/COMP_CWORD set, the completion function called, COMPREPLY
/// printed one per line (sorted, without duplicates).
enum Completion {
    static let script = repoRoot + "/tools/completion/lmctfy.bash"

    /// What bash offers after `words` (the last one is the word being
    /// completed). The built lmctfy and lmctl are first on PATH.
    static func bash(_ words: [String]) throws -> [String] {
        let quoted = words.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let program = """
            set -u
            source '\(script)'
            COMP_WORDS=(\(quoted)); COMP_CWORD=\(words.count - 1)
            _lmctfy_complete
            printf '%s\\n' "${COMPREPLY[@]}" | sort -u
            """
        let r = try run(["bash", "--norc", "--noprofile", "-c", program], environment: ["PATH=\(builtBinDirectory()):/usr/bin:/bin"])
        guard r.status == 0 else {
            throw LmctfyError(.internal, "bash: \(r.status): \(String(decoding: r.stderr, as: UTF8.self))")
        }
        return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// The same through zsh's bashcompinit (what _lmctfy loads), where zsh
    /// itself filters by the typed prefix: only the unfiltered candidates
    /// are compared.
    static func zsh(_ words: [String]) throws -> [String] {
        let quoted = words.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let program = """
            autoload -U +X bashcompinit && bashcompinit
            compdef() { : }
            source '\(script)'
            local -a COMP_WORDS COMPREPLY; local COMP_CWORD
            COMP_WORDS=(\(quoted)); COMP_CWORD=\(words.count - 1); words=(\(quoted)); CURRENT=\(words.count)
            compgen -F _lmctfy_complete -- '' | sort -u
            """
        let r = try run(["zsh", "-f", "-c", program], environment: ["PATH=\(builtBinDirectory()):/usr/bin:/bin"])
        guard r.status == 0 else {
            throw LmctfyError(.internal, "zsh: \(r.status): \(String(decoding: r.stderr, as: UTF8.self))")
        }
        return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
    }
}

@Suite struct CompletionTests {
    /// Every menu of the dispatcher completes to exactly its words (the
    /// top adds `help`; lmctl's top adds its own verbs).
    @Test func menusMatchTheCommandTable() throws {
        for (path, words) in menus() {
            let expected = Set(words + (path.isEmpty ? ["help"] : []))
            #expect(Set(try Completion.bash(["lmctfy"] + path + [""])) == expected, "lmctfy \(path.joined(separator: " "))")
            // Flags in front change nothing.
            #expect(Set(try Completion.bash(["lmctfy", "-v"] + path + [""])) == expected, "lmctfy -v \(path.joined(separator: " "))")
            let lmctlTop = path.isEmpty ? Set(LmctlCLI.ownVerbs) : []
            #expect(Set(try Completion.bash(["lmctl", "--agent", "unix:///x"] + path + [""])) == expected.union(lmctlTop),
                    "lmctl \(path.joined(separator: " "))")
        }
        // A prefix narrows.
        #expect(try Completion.bash(["lmctfy", "li"]) == ["list"])
        #expect(try Completion.bash(["lmctfy", "notify", "memory", "t"]) == ["threshold"])
        // An unknown word offers nothing.
        #expect(try Completion.bash(["lmctfy", "frobnicate", ""]) == [])
    }

    /// Every flag of the help, on every command; lmctl's own flags before its verb.
    @Test func flagsMatchTheDispatcher() throws {
        let offered = Set(try Completion.bash(["lmctfy", "destroy", "-"]) + (try Completion.bash(["lmctfy", "destroy", "--"])))
        for flag in helpFlags() {
            #expect(offered.contains(flag) || offered.contains(flag + "="), "lmctfy completion lacks \(flag)")
        }
        let lmctl = Set(try Completion.bash(["lmctl", "--"]))
        for flag in LmctlCLI.ownFlags { #expect(lmctl.contains(flag), "lmctl completion lacks \(flag)") }
        #expect(Set(try Completion.bash(["lmctfy", "-o", ""])) == ["pairs", "values", "long", "json"])
        #expect(try Completion.bash(["lmctl", "top", "--s"]) == ["--sort"])
        #expect(try Completion.bash(["lmctl", "events", "--kind", "OO"]) == ["OOM"])
        // `snapshot export|import` is the verb: its own flags, and export's
        // -o is a file (it offered export/import again, and output styles).
        #expect(try Completion.bash(["lmctl", "snapshot", ""]) == ["export", "import"])
        #expect(try Completion.bash(["lmctl", "snapshot", "export", "--"]) == ["--text"])
        #expect(Set(try Completion.bash(["lmctl", "snapshot", "import", "f", "--"])) == ["--name", "--start"])
        #expect(!(try Completion.bash(["lmctl", "snapshot", "export", "/x", "-o", ""])).contains("json"))
    }

    @Test(.enabled(if: onPath("zsh") != nil, "SKIPPED LOUDLY: zsh is not installed (tools/deps.sh installs it)"))
    func zshLoadsTheSameTable() throws {
        let parse = try run(["zsh", "-n", repoRoot + "/tools/completion/_lmctfy"])
        #expect(parse.status == 0, "\(String(decoding: parse.stderr, as: UTF8.self))")
        for (path, words) in menus() {
            let expected = Set(words + (path.isEmpty ? ["help"] : []))
            #expect(Set(try Completion.zsh(["lmctfy"] + path + [""])) == expected, "zsh: lmctfy \(path.joined(separator: " "))")
        }
        #expect(Set(try Completion.zsh(["lmctl", "snapshot", ""])) == ["export", "import"])
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct CompletionContainerNameTests {
    /// Container names come from `lmctfy list containers -r /`: the ones this
    /// test made (and their subcontainers) are offered for a verb taking a
    /// name, narrowed by the typed prefix; not for `init`; gone once destroyed.
    @Test func namesOfRealContainers() throws {
        let lmctfy = builtTool("lmctfy")
        let a = RealCgroups.uniqueName("compa"), b = RealCgroups.uniqueName("compb")
        defer {
            _ = try? TestProcess.capture([lmctfy, "destroy", "-f", a])
            _ = try? TestProcess.capture([lmctfy, "destroy", "-f", b])
        }
        for name in [a, b, a + "/web"] {
            let r = try TestProcess.capture([lmctfy, "create", name, ""])
            #expect(r.status == 0, "create \(name): \(String(decoding: r.stderr, as: UTF8.self))")
        }
        let prefix = "/" + RealCgroups.prefix + "\(getpid())_"
        // Other tests in this process make containers with the same prefix.
        let mine = { (names: [String]) in names.filter { $0.hasPrefix(a) || $0.hasPrefix(b) } }
        #expect(mine(try Completion.bash(["lmctfy", "destroy", prefix])) == [a, a + "/web", b].sorted())
        #expect(try Completion.bash(["lmctfy", "-r", "list", "containers", a]) == [a, a + "/web"])
        #expect(try Completion.bash(["lmctfy", "stats", "summary", a + "/w"]) == [a + "/web"])
        #expect(try Completion.bash(["lmctfy", "run", b]) == [b])
        // The argument after the name is not a name.
        #expect(try Completion.bash(["lmctfy", "notify", "memory", "threshold", a, prefix]) == [])
        #expect(mine(try Completion.bash(["lmctfy", "init", prefix])) == [])
        _ = try TestProcess.capture([lmctfy, "destroy", "-f", b])
        #expect(mine(try Completion.bash(["lmctfy", "destroy", prefix])) == [a, a + "/web"].sorted())
    }

    /// Through lmctl the names are the agent's, listed over the connection
    /// the line names (--agent), not the local machine's.
    @Test func lmctlNamesComeFromTheAgentOnTheLine() throws {
        // The agent serves a container of its own, so that only what this
        // test makes is listed.
        let root = RealCgroups.uniqueName("croot")
        let made = try TestProcess.capture([builtTool("lmctfy"), "create", root, ""])
        #expect(made.status == 0)
        defer { RealCgroups.destroy(root) }
        let agent = try AgentProcess(config: "root_container: \"\(root)\"")
        defer { agent.stop() }
        let lmctl = builtTool("lmctl")
        let r = try TestProcess.capture([lmctl, "--agent", "unix://\(agent.socket)", "create", "/inside", ""])
        #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        let names = try Completion.bash(["lmctl", "--agent", "unix://\(agent.socket)", "destroy", "/"])
        #expect(names == ["/", "/inside"], "\(names)")
        // With an agent that is not there: nothing but "/", and no hang.
        let t0 = MonotonicClock.milliseconds()
        #expect(try Completion.bash(["lmctl", "--agent", "unix:///nonexistent/agent.sock", "destroy", "/"]) == ["/"])
        #expect(MonotonicClock.milliseconds() - t0 < 5000)
    }
}
