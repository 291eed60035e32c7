"""A minimal binary-safe RESP client for the Python bench scripts of
docs/bench/ (raw sockets, so packed arguments travel as they are), and the
redis-server they start."""
import socket
import subprocess
import tempfile
import time


def resp(args):
    """One command in RESP; `str` arguments are UTF-8 encoded."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b":"):
            return rest
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(65536)
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(line)

    def call(self, *args):
        self.s.sendall(resp(args))
        return self.reply()

    def pipeline(self, cmds):
        """Sends the encoded commands `cmds` at once, then reads (and
        returns) their replies."""
        self.s.sendall(b"".join(cmds))
        return [self.reply() for _ in cmds]


def start_server(wrapper=lambda d: []):
    """Starts redis-server on a free port of 127.0.0.1 (no persistence, in
    a new temporary directory `d`), behind `wrapper(d)` (e.g. valgrind's
    command line), and waits until it answers PING. Returns the process,
    `d`, the port and the connection that pinged."""
    d = tempfile.mkdtemp()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    process = subprocess.Popen(
        [*wrapper(d), "redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            c = Conn(port)
            c.call("PING")
            return process, d, port, c
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("redis-server did not answer on port %d" % port)
