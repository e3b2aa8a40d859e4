//! Redis on loopback as an extra column: the harness starts its own `redis-server` (AOF on) on
//! a free port in a temp dir, speaks RESP over a `TcpStream` itself, and stops the server.

use crate::util::{R, Rng, VAL_LEN, Values, key};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Commands in flight per connection for fill and read.
pub const PIPELINE: usize = 64;

/// The path of `redis-server`, if installed.
pub fn installed() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("redis-server"))
        .find(|p| p.is_file())
}

/// A running server; stopped on drop.
pub struct Server {
    child: Child,
    port: u16,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with `appendonly yes` and `appendfsync <fsync>` ("everysec" or "always").
    pub fn start(bin: &Path, base: &Path, fsync: &str) -> R<Server> {
        let dir = tempfile::tempdir_in(base)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
                "--daemonize",
                "no",
            ])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Server { child, port, dir };
        // Bounded wait for the server to accept connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = server.connect()
                && c.call(&[b"PING"]).is_ok()
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("redis-server exited at start: {status}").into());
            }
            if Instant::now() > deadline {
                return Err("redis-server did not start within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new connection.
    pub fn connect(&self) -> R<Conn> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            w: s.try_clone()?,
            r: BufReader::with_capacity(1 << 16, s),
            out: Vec::with_capacity(1 << 16),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP connection.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    out: Vec<u8>,
}

/// A reply, as much as the benchmark needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Nil,
    Bulk(usize),
    Int(i64),
}

impl Conn {
    /// Queues a command.
    pub fn queue(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> R<()> {
        self.w.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads one reply.
    pub fn reply(&mut self) -> R<Reply> {
        let mut line = Vec::with_capacity(32);
        self.r.read_until(b'\n', &mut line)?;
        if line.len() < 3 {
            return Err("redis closed the connection".into());
        }
        let body = std::str::from_utf8(&line[1..line.len() - 2])?;
        match line[0] {
            b'+' => Ok(Reply::Ok),
            b'-' => Err(format!("redis error: {body}").into()),
            b':' => Ok(Reply::Int(body.parse()?)),
            b'$' => {
                let n: i64 = body.parse()?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut buf)?;
                Ok(Reply::Bulk(n as usize))
            }
            other => Err(format!("unexpected RESP reply type {:?}", other as char).into()),
        }
    }

    /// Reads one bulk reply and returns its bytes (`None` for a nil reply).
    pub fn reply_bytes(&mut self) -> R<Option<Vec<u8>>> {
        let mut line = Vec::with_capacity(32);
        self.r.read_until(b'\n', &mut line)?;
        if line.len() < 3 {
            return Err("redis closed the connection".into());
        }
        let body = std::str::from_utf8(&line[1..line.len() - 2])?;
        match line[0] {
            b'$' => {
                let n: i64 = body.parse()?;
                if n < 0 {
                    return Ok(None);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Ok(Some(buf))
            }
            b'-' => Err(format!("redis error: {body}").into()),
            other => Err(format!("expected a bulk reply, got {:?}", other as char).into()),
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> R<Reply> {
        self.queue(args);
        self.flush()?;
        self.reply()
    }
}

/// SETs keys `from..to`, `PIPELINE` commands in flight.
pub fn fill(c: &mut Conn, vals: &Values, from: u64, to: u64) -> R<()> {
    let mut i = from;
    while i < to {
        let end = (i + PIPELINE as u64).min(to);
        for j in i..end {
            c.queue(&[b"SET", &key(j), vals.get(j)]);
        }
        c.flush()?;
        for _ in i..end {
            c.reply()?;
        }
        i = end;
    }
    Ok(())
}

/// `n` random GETs over keys `0..keys`, pipelined; returns how many were found with the
/// expected length.
pub fn read(c: &mut Conn, keys: u64, n: u64, seed: u64) -> R<u64> {
    let mut rng = Rng::new(seed);
    let mut found = 0;
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(PIPELINE as u64);
        for _ in 0..batch {
            c.queue(&[b"GET", &key(rng.below(keys))]);
        }
        c.flush()?;
        for _ in 0..batch {
            if c.reply()? == Reply::Bulk(VAL_LEN) {
                found += 1;
            }
        }
        done += batch;
    }
    Ok(found)
}
