//! A fake RabbitMQ node that never lets a client in: it speaks just enough AMQP 0-9-1 to fail
//! each handshake the way a real node does while it stops or boots, in rotation: `connection.close`
//! 320 CONNECTION_FORCED (node shutting down), 530 NOT_ALLOWED "vhost is down" (after
//! `connection.open`, as RabbitMQ sends it), and the socket closed mid-handshake. RabbitMQ
//! 3.10.8 mostly refuses the TCP connection in those moments, so the fault suite stages the
//! replies here to test them deterministically.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the fake fails one handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `connection.close` 320 after `connection.start-ok`.
    ConnectionForced,
    /// `connection.close` 530 "vhost is down" after `connection.open`.
    VhostDown,
    /// The socket closed after `connection.start-ok`.
    Dropped,
}

const ROTATION: [Failure; 3] = [
    Failure::ConnectionForced,
    Failure::VhostDown,
    Failure::Dropped,
];

/// The fake node: listens on a free local port until dropped (the listener thread then ends
/// with the test process).
pub struct FakeNode {
    pub port: u16,
    served: Arc<[AtomicUsize; 3]>,
}

impl FakeNode {
    pub fn start() -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake node");
        let port = listener.local_addr().expect("addr").port();
        let served: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let counts = served.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let i = n % ROTATION.len();
                let counts = counts.clone();
                std::thread::spawn(move || {
                    if fail(stream, ROTATION[i]).is_ok() {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        FakeNode { port, served }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Handshakes failed so far, per kind.
    pub fn served(&self, failure: Failure) -> usize {
        let i = ROTATION.iter().position(|f| *f == failure).expect("kind");
        self.served[i].load(Ordering::Relaxed)
    }
}

fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend(class.to_be_bytes());
    payload.extend(method.to_be_bytes());
    payload.extend(args);
    let mut frame = vec![1u8, 0, 0];
    frame.extend(u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend(payload);
    frame.push(0xCE);
    frame
}

fn long_str(s: &str) -> Vec<u8> {
    let mut v = u32::try_from(s.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    v.extend(s.as_bytes());
    v
}

/// Reads one frame; returns (class, method) of a method frame.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u16, u16)> {
    let mut head = [0u8; 7];
    stream.read_exact(&mut head)?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut body = vec![0u8; size + 1];
    stream.read_exact(&mut body)?;
    if head[0] == 1 && size >= 4 {
        Ok((
            u16::from_be_bytes([body[0], body[1]]),
            u16::from_be_bytes([body[2], body[3]]),
        ))
    } else {
        Ok((0, 0))
    }
}

fn close(code: u16, text: &str) -> Vec<u8> {
    let mut args = code.to_be_bytes().to_vec();
    args.push(u8::try_from(text.len()).expect("short string"));
    args.extend(text.as_bytes());
    args.extend([0u8; 4]); // class-id, method-id
    method_frame(10, 50, &args)
}

fn fail(mut stream: TcpStream, failure: Failure) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    // connection.start: 0-9, no server properties, PLAIN, en_US.
    let mut start = vec![0u8, 9];
    start.extend(0u32.to_be_bytes());
    start.extend(long_str("PLAIN"));
    start.extend(long_str("en_US"));
    stream.write_all(&method_frame(10, 10, &start))?;
    read_frame(&mut stream)?; // start-ok
    match failure {
        Failure::Dropped => return Ok(()),
        Failure::ConnectionForced => stream.write_all(&close(
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        ))?,
        Failure::VhostDown => {
            // connection.tune: channel-max 2047, frame-max 131072, heartbeat 60.
            let mut tune = 2047u16.to_be_bytes().to_vec();
            tune.extend(131_072u32.to_be_bytes());
            tune.extend(60u16.to_be_bytes());
            stream.write_all(&method_frame(10, 30, &tune))?;
            // tune-ok, then open
            while read_frame(&mut stream)? != (10, 40) {}
            stream.write_all(&close(
                530,
                "NOT_ALLOWED - access to vhost '/' refused for user 'guest': vhost '/' is down",
            ))?;
        }
    }
    // Wait for close-ok (or the client giving up), as a broker would.
    let _ = read_frame(&mut stream);
    Ok(())
}
