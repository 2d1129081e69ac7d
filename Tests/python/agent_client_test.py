#!/usr/bin/env python3
"""Anyone with protoc can talk to the agent: this client is generated from
proto/ with `protoc --python_out` and written from docs/PROTOCOL.md alone (no
Swift code). It starts lmctfy-agent on a private socket, then does the hello,
ListContainers, Create, Spec and Destroy, and checks a bad call's status; and
on the agent's TLS-only TCP port (PROTOCOL.md section 3.1), with Python's ssl
module and certificates from tools/make-test-pki, the hello and a Ping.

usage: agent_client_test.py AGENT_BINARY   (root; prints "N passed, N failed")
"""
import atexit
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GEN = tempfile.mkdtemp(prefix="lmctfy-py-")
atexit.register(shutil.rmtree, GEN, True)
subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", GEN]
               + [f for f in os.listdir(os.path.join(ROOT, "proto")) if f.endswith(".proto")],
               check=True, cwd=os.path.join(ROOT, "proto"))
sys.path.insert(0, GEN)
import agent_pb2  # noqa: E402
import lmctfy_pb2  # noqa: E402

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


class Client:
    """Framing: 4-byte big-endian length + one Frame (PROTOCOL.md §1)."""

    def __init__(self, path, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
        self.sock = sock
        self.buf = b""
        self.next_id = 1  # the dialler's stream ids are odd

    def send(self, frame):
        body = frame.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self):
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    f = agent_pb2.Frame()
                    f.ParseFromString(body)
                    return f
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("agent closed the connection")
            self.buf += chunk

    def hello(self, max_version=1):
        f = agent_pb2.Frame(kind=agent_pb2.FRAME_HELLO, stream_id=0)
        f.hello.stage = agent_pb2.HELLO_OFFER
        f.hello.min_version = 1
        f.hello.max_version = max_version
        f.hello.peer_name = "python-client"
        f.hello.max_frame_bytes = 4 << 20
        f.hello.max_streams = 16
        self.send(f)
        r = self.recv()
        self.version = r.hello.version
        return r.kind == agent_pb2.FRAME_HELLO and r.hello.stage == agent_pb2.HELLO_ACCEPTED

    def call(self, method, request, response_type):
        sid = self.next_id
        self.next_id += 2
        self.send(agent_pb2.Frame(kind=agent_pb2.FRAME_REQUEST, stream_id=sid, method=method,
                                  payload=request.SerializeToString(), deadline_ms=10000))
        responses = []
        while True:
            f = self.recv()
            if f.kind == agent_pb2.FRAME_PING:
                self.send(agent_pb2.Frame(kind=agent_pb2.FRAME_PONG, stream_id=0, payload=f.payload))
                continue
            if f.stream_id != sid:
                continue
            if f.kind == agent_pb2.FRAME_RESPONSE:
                m = response_type()
                m.ParseFromString(f.payload)
                responses.append(m)
            elif f.kind == agent_pb2.FRAME_STATUS:
                return f.status.code, f.status.message, responses


def main():
    agent_bin = sys.argv[1]
    work = tempfile.mkdtemp(prefix="lmctfy-py-agent-")
    atexit.register(shutil.rmtree, work, True)
    sock = os.path.join(work, "agent.sock")
    conf = os.path.join(work, "agent.conf")
    pki = os.path.join(work, "pki")
    subprocess.run([os.path.join(ROOT, "tools", "make-test-pki"), pki], check=True, stdout=subprocess.DEVNULL)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with open(conf, "w") as f:
        f.write(f'unix_socket_path: "{sock}"\nlog_level: LOG_WARNING\n'
                f'state_dir: "{os.path.join(work, "state")}"\n'
                f'tcp_address: "127.0.0.1:{port}"\n'
                f'tls {{ certificate_file: "{pki}/agent.pem" key_file: "{pki}/agent.key" ca_file: "{pki}/ca.pem" }}\n'
                f'role {{ role: AGENT_ROLE_ADMIN certificate_ou: "admins" }}\n')
    agent = subprocess.Popen([agent_bin, "--config", conf])
    name = f"/lmctfy_test_py_{os.getpid()}"
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        c = Client(sock)
        check(c.hello() and c.version == 1, "hello: a version 1 offer is answered by HELLO_ACCEPTED, version 1")

        # Version 2 (PROTOCOL.md section 4): a unary answer is one RESPONSE
        # frame carrying the status.
        c2 = Client(sock)
        check(c2.hello(max_version=2) and c2.version == 2, "hello: an offer of 1-2 gets version 2")
        c2.send(agent_pb2.Frame(kind=agent_pb2.FRAME_REQUEST, stream_id=1, method="Ping",
                                payload=agent_pb2.PingRequest(data=b"py").SerializeToString()))
        f = c2.recv()
        pong = agent_pb2.PingResponse()
        pong.ParseFromString(f.payload)
        check(f.kind == agent_pb2.FRAME_RESPONSE and f.stream_id == 1 and f.HasField("status")
              and f.status.code == 0 and pong.data == b"py",
              "version 2: Ping is answered by one RESPONSE carrying status OK")
        c2.sock.close()

        code, _, rs = c.call("ListContainers", agent_pb2.ListContainersRequest(name="/"), agent_pb2.ListContainersResponse)
        check(code == 0 and len(rs) == 1, "ListContainers / returns OK and one response")

        spec = lmctfy_pb2.ContainerSpec()
        spec.memory.limit = 100000000
        spec.pids.limit = 20
        code, msg, _ = c.call("Create", agent_pb2.CreateRequest(name=name, spec=spec), agent_pb2.CreateResponse)
        check(code == 0, f"Create {name} ({msg})")

        code, _, rs = c.call("ListContainers", agent_pb2.ListContainersRequest(name="/"), agent_pb2.ListContainersResponse)
        check(code == 0 and name in rs[0].names, "the new container is listed")

        code, _, rs = c.call("Spec", agent_pb2.SpecRequest(name=name), agent_pb2.SpecResponse)
        check(code == 0 and rs[0].spec.memory.limit == 99999744, "Spec reads the page-rounded limit back")

        code, _, _ = c.call("Create", agent_pb2.CreateRequest(name=name), agent_pb2.CreateResponse)
        check(code == 6, "a second Create is ALREADY_EXISTS (6)")

        code, msg, _ = c.call("Destroy", agent_pb2.DestroyRequest(name=name), agent_pb2.DestroyResponse)
        check(code == 0, f"Destroy ({msg})")

        code, _, _ = c.call("Spec", agent_pb2.SpecRequest(name=name), agent_pb2.SpecResponse)
        check(code == 5, "Spec of the destroyed container is NOT_FOUND (5)")
        c.sock.close()

        # TLS 1.3 with mutual certificates (PROTOCOL.md section 3.1): the
        # hello without a key, then a Ping; the agent's certificate names 127.0.0.1.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(os.path.join(pki, "ca.pem"))
        ctx.load_cert_chain(os.path.join(pki, "admin.pem"), os.path.join(pki, "admin.key"))
        tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        check(tls.version() == "TLSv1.3", f"TLS: Python's ssl module negotiates TLSv1.3 ({tls.version()})")
        t = Client(None, sock=tls)
        check(t.hello() and t.version == 1, "TLS: a hello without a key is ACCEPTED (the certificate authenticates)")
        code, _, rs = t.call("Ping", agent_pb2.PingRequest(data=b"tls"), agent_pb2.PingResponse)
        check(code == 0 and rs and rs[0].data == b"tls", "TLS: Ping is answered")
        tls.close()
        # Plaintext on the TLS port: the answer to the offer is a GOAWAY.
        raw = Client(None, sock=socket.create_connection(("127.0.0.1", port)))
        o = agent_pb2.Frame(kind=agent_pb2.FRAME_HELLO, stream_id=0)
        o.hello.stage = agent_pb2.HELLO_OFFER
        o.hello.min_version = 1
        raw.send(o)
        g = raw.recv()
        check(g.kind == agent_pb2.FRAME_GOAWAY and g.goaway.reason == agent_pb2.GOAWAY_UNAUTHENTICATED,
              "TLS: plaintext on the TLS port is GOAWAY_UNAUTHENTICATED")
        raw.sock.close()
    finally:
        subprocess.run([agent_bin.replace("lmctfy-agent", "lmctfy"), "destroy", "-f", name],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        agent.terminate()
        rc = agent.wait(timeout=20)
        check(rc == 0, "the agent stops cleanly on SIGTERM (exit 0, uv_loop_close 0)")
    print(f"python-client: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
