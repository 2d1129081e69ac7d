import Glibc
import LmctfySystem
import Testing

/// Whether a pseudo-terminal opens on this machine (not in the v2 guest,
/// which has no devpts).
private let pseudoTerminalsWork: Bool = {
    guard let pty = try? Terminal.openPseudoTerminal() else { return false }
    close(pty.master)
    close(pty.slave)
    return true
}()

/// A terminal's modes read in the SSH numbering and set on another
/// terminal (`lmctl run -t` passing its own to the agent's pseudo-terminal).
@Suite(.enabled(if: pseudoTerminalsWork, "no pseudo-terminal opens here (devpts not mounted, as in the v2 guest): the modes cannot be read or set"))
struct TerminalModesTests {
    @Test func modesReadFromOneTerminalMakeAnotherTheSame() throws {
        let from = try Terminal.openPseudoTerminal()
        defer { close(from.master); close(from.slave) }
        let to = try Terminal.openPseudoTerminal()
        defer { close(to.master); close(to.slave) }
        // A terminal set apart from the kernel's defaults: erase ^H,
        // interrupt disabled, iutf8, no echo, no output processing.
        var t = termios()
        #expect(tcgetattr(from.slave, &t) == 0)
        withUnsafeMutableBytes(of: &t.c_cc) { cc in
            cc[Int(VERASE)] = 8
            cc[Int(VINTR)] = 0
        }
        t.c_iflag |= tcflag_t(IUTF8)
        t.c_lflag &= ~tcflag_t(ECHO)
        t.c_oflag &= ~tcflag_t(OPOST)
        #expect(tcsetattr(from.slave, TCSANOW, &t) == 0)

        let modes = try #require(Terminal.modes(from.slave))
        #expect(TerminalSetting.refusal(modes) == nil)
        #expect(modes.contains(TerminalSetting(opcode: 3, value: 8)), "erase ^H")
        #expect(modes.contains(TerminalSetting(opcode: 1, value: TerminalSetting.disabled)), "intr disabled")
        #expect(modes.contains(TerminalSetting(opcode: 42, value: 1)), "iutf8")
        #expect(modes.contains(TerminalSetting(opcode: 53, value: 0)), "-echo")
        #expect(!modes.contains { (90...93).contains($0.opcode) }, "a pseudo-terminal keeps its character size and parity")

        var before = termios()
        #expect(tcgetattr(to.slave, &before) == 0)
        #expect(before.c_iflag & tcflag_t(IUTF8) == 0, "a new terminal starts without iutf8")
        try Terminal.setModes(to.slave, modes)
        var after = termios()
        #expect(tcgetattr(to.slave, &after) == 0)
        #expect(after.c_iflag == t.c_iflag && after.c_lflag == t.c_lflag && after.c_oflag == t.c_oflag)
        withUnsafeBytes(of: after.c_cc) { a in
            withUnsafeBytes(of: t.c_cc) { b in
                for i in [VINTR, VQUIT, VERASE, VKILL, VEOF, VEOL, VEOL2, VSTART, VSTOP, VSUSP, VREPRINT, VWERASE, VLNEXT, VDISCARD] {
                    #expect(a[Int(i)] == b[Int(i)], "c_cc[\(i)]")
                }
            }
        }
        // Numbers this machine does not have (VSTATUS, 17; an unassigned
        // 120; CS7, 90) change nothing; none at all changes nothing.
        try Terminal.setModes(to.slave, [TerminalSetting(opcode: 17, value: 3), TerminalSetting(opcode: 120, value: 1), TerminalSetting(opcode: 90, value: 1)])
        try Terminal.setModes(to.slave, [])
        var same = termios()
        #expect(tcgetattr(to.slave, &same) == 0)
        #expect(same.c_iflag == after.c_iflag && same.c_lflag == after.c_lflag && same.c_oflag == after.c_oflag && same.c_cflag == after.c_cflag)
        #expect(withUnsafeBytes(of: same.c_cc) { Array($0) } == withUnsafeBytes(of: after.c_cc) { Array($0) })
    }

    @Test func modesOutOfRangeAreRefusedSayingWhy() {
        for (modes, why) in [
            ([TerminalSetting(opcode: 0, value: 1)], "numbered 1 to 159"),
            ([TerminalSetting(opcode: 160, value: 1)], "numbered 1 to 159"),
            ([TerminalSetting(opcode: 42, value: 2)], "a flag: 0 or 1"),
            ([TerminalSetting(opcode: 3, value: 256)], "0 to 255"),
            (Array(repeating: TerminalSetting(opcode: 42, value: 1), count: 65), "at most 64"),
        ] {
            let refusal = TerminalSetting.refusal(modes)
            #expect(refusal?.contains(why) == true, "\(String(describing: refusal))")
        }
        #expect(TerminalSetting.refusal([TerminalSetting(opcode: 120, value: 7), TerminalSetting(opcode: 3, value: 255)]) == nil,
                "a number this machine does not have, and a disabled character, are let be")
    }
}
