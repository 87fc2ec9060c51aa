//! The transport: one thread of its own running a glommio executor (so the
//! sockets are io_uring ops like the broker's), holding one pipelined
//! connection per broker address. Applications talk to it through channels
//! whose futures work in any runtime, or none: futures from tokio, from
//! glommio, or `block_on` all complete the same way.

use crate::error::{ClientError, Result};
use fjord_net::gather::{Frame, GatherWriter};
use fjord_net::io::FrameReader;
use fjord_net::{api, frame, wire};
use futures::channel::{mpsc, oneshot};
use futures::io::AsyncReadExt;
use futures::{FutureExt, StreamExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Locked memory glommio registers for the transport's ring: sockets need
/// none of it, and `ulimit -l` is small on many machines.
const IO_MEMORY_BYTES: usize = 256 << 10;
/// Requests queued past this many bytes are sent without waiting for more;
/// below it, pipelined requests share a send.
const SEND_BYTES: usize = 64 << 10;

/// A response frame, verified once on arrival: its header's position and
/// the fields the transport needs are kept, so nothing is decoded twice.
#[derive(Debug)]
pub struct Response {
    buf: Vec<u8>,
    header: std::ops::Range<usize>,
    correlation_id: u32,
    error_code: i16,
}

impl Response {
    fn verify(buf: Vec<u8>) -> Result<Response> {
        let limits = frame::Limits {
            frame_bytes_max: usize::MAX,
            ..frame::Limits::default()
        };
        let (frame, _) = frame::decode(&buf, &limits)
            .map_err(protocol)?
            .ok_or_else(|| ClientError::Protocol("incomplete frame".into()))?;
        let header = frame.response_header().map_err(protocol)?;
        let start = frame.header.as_ptr() as usize - buf.as_ptr() as usize;
        let (correlation_id, error_code) = (header.correlation_id(), header.error_code());
        let header = start..start + frame.header.len();
        Ok(Response {
            buf,
            header,
            correlation_id,
            error_code,
        })
    }

    /// The payload section.
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.header.end..]
    }

    /// The body, unpacked, and the payload it addresses. A response that
    /// carries an error instead of a body is that error.
    pub fn unpack(&self) -> Result<(wire::ResponseT, &[u8])> {
        if let Some(code) = crate::error::error_code(self.error_code) {
            return Err(ClientError::Broker {
                code,
                context: None,
            });
        }
        // SAFETY: these bytes passed the flatbuffers verifier in `verify`
        // and `buf` has not changed since (it is never handed out mutably).
        let header = unsafe {
            flatbuffers::root_unchecked::<wire::ResponseHeader>(&self.buf[self.header.clone()])
        };
        Ok((header.unpack().body, self.payload()))
    }

    /// The bytes of a payload range, checked.
    pub fn range<'a>(payload: &'a [u8], range: Option<&wire::PayloadRangeT>) -> Result<&'a [u8]> {
        let Some(range) = range else { return Ok(&[]) };
        let start = range.offset as usize;
        start
            .checked_add(range.len as usize)
            .and_then(|end| payload.get(start..end))
            .ok_or_else(|| ClientError::Protocol("payload range outside the payload".into()))
    }
}

fn protocol(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

type Reply = oneshot::Sender<Result<Option<Response>>>;

/// Which connection to a broker a request takes. Answers come in request
/// order, so a long poll would hold up everything queued behind it on its
/// connection: long polls get a connection of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Requests answered at once.
    Prompt,
    /// Fetches that may wait for data.
    LongPoll,
}

/// Work for the transport thread.
pub(crate) enum Job {
    /// Send a request; `expect`: a response is due (not for acks 0).
    Call {
        addr: SocketAddr,
        lane: Lane,
        /// How long the broker may hold the request on purpose (a long
        /// poll), on top of the request timeout.
        wait: Duration,
        header: wire::RequestHeaderT,
        payload: Vec<u8>,
        expect: bool,
        reply: Reply,
    },
    /// Run a closure on the transport thread (it spawns local tasks there).
    Spawn(Box<dyn FnOnce() + Send>),
}

/// Starts the transport thread; it ends when every sender is dropped.
pub(crate) fn start(
    timeout: Duration,
    pin_core: Option<usize>,
) -> std::io::Result<mpsc::UnboundedSender<Job>> {
    let (tx, rx) = mpsc::unbounded();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fjord-client".into())
        .spawn(move || {
            if let Some(core) = pin_core {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
            let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name("fjord-client")
                .io_memory(IO_MEMORY_BYTES)
                .make();
            match executor {
                Ok(executor) => {
                    let _ = started_tx.send(Ok(()));
                    executor.run(run(rx, timeout));
                }
                Err(e) => {
                    let _ = started_tx.send(Err(std::io::Error::other(e.to_string())));
                }
            }
        })?;
    started_rx
        .recv()
        .map_err(|_| std::io::Error::other("transport thread died"))??;
    Ok(tx)
}

async fn run(mut jobs: mpsc::UnboundedReceiver<Job>, timeout: Duration) {
    let mut connections: HashMap<(SocketAddr, Lane), Rc<Connection>> = HashMap::new();
    while let Some(job) = jobs.next().await {
        match job {
            Job::Call {
                addr,
                lane,
                wait,
                header,
                payload,
                expect,
                reply,
            } => {
                let connection = connections
                    .entry((addr, lane))
                    .and_modify(|c| {
                        if c.broken.borrow().is_some() {
                            *c = Connection::open(addr, timeout);
                        }
                    })
                    .or_insert_with(|| Connection::open(addr, timeout));
                connection.call(
                    header,
                    payload,
                    expect,
                    reply,
                    Instant::now() + timeout + wait,
                );
            }
            Job::Spawn(f) => f(),
        }
    }
}

/// A frame to write, and for a request with no answer due, whom to tell
/// once it is written.
type Queued = (Request, Option<Reply>);

/// A request's frame, sent from its own buffers.
struct Request {
    head: Vec<u8>,
    payload: Vec<u8>,
}

impl Frame for Request {
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        [self.head.as_slice(), self.payload.as_slice()].into_iter()
    }
}

/// A request waiting for its answer.
struct Pending {
    id: u32,
    reply: Reply,
    /// Past this the connection is declared stuck.
    deadline: Instant,
}

/// How often a connection checks its oldest request against its deadline.
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// One pipelined connection: requests are written in call order and
/// answered in that order, matched by correlation id. Answers come in
/// order, so one overdue answer means the connection is stuck: a sweeper
/// checks only the oldest request (no timer per request) and, when it is
/// overdue, fails everything waiting and closes the connection.
struct Connection {
    writes: LocalSender<Queued>,
    pending: Rc<RefCell<VecDeque<Pending>>>,
    correlation_id: Cell<u32>,
    broken: Rc<RefCell<Option<ClientError>>>,
}

impl Connection {
    fn open(addr: SocketAddr, timeout: Duration) -> Rc<Connection> {
        let (writes, queued) = local_channel::new_unbounded();
        let connection = Rc::new(Connection {
            writes,
            pending: Rc::new(RefCell::new(VecDeque::new())),
            correlation_id: Cell::new(0),
            broken: Rc::new(RefCell::new(None)),
        });
        let (pending, broken) = (connection.pending.clone(), connection.broken.clone());
        glommio::spawn_local(async move {
            // Not detached: dropping it (when the sweeper wins) closes the
            // socket.
            let driving = glommio::spawn_local(drive(addr, timeout, queued, pending.clone()));
            let sweeping = Box::pin(sweep(addr, pending.clone()));
            let error = match futures::future::select(driving, sweeping).await {
                futures::future::Either::Left((error, _)) => error,
                futures::future::Either::Right((error, _)) => error,
            };
            *broken.borrow_mut() = Some(error.clone());
            // Everything still waiting fails with the connection's error.
            for waiting in pending.borrow_mut().drain(..) {
                let _ = waiting.reply.send(Err(error.clone()));
            }
        })
        .detach();
        connection
    }

    fn call(
        &self,
        mut header: wire::RequestHeaderT,
        payload: Vec<u8>,
        expect: bool,
        reply: Reply,
        deadline: Instant,
    ) {
        if let Some(error) = self.broken.borrow().clone() {
            let _ = reply.send(Err(error));
            return;
        }
        let id = self.correlation_id.get().wrapping_add(1);
        self.correlation_id.set(id);
        header.correlation_id = id;
        let head = api::request_head(&header, payload.len());
        // With no answer due, the caller hears back once the frame is on
        // the socket: a process that exits after that loses nothing queued.
        let written = if expect {
            self.pending.borrow_mut().push_back(Pending {
                id,
                reply,
                deadline,
            });
            None
        } else {
            Some(reply)
        };
        // Unbounded: the caller's own flow control (linger, in-flight
        // limits) bounds what is queued here.
        let _ = self.writes.try_send((Request { head, payload }, written));
    }
}

/// Returns once the oldest waiting request is overdue.
async fn sweep(addr: SocketAddr, pending: Rc<RefCell<VecDeque<Pending>>>) -> ClientError {
    loop {
        glommio::timer::sleep(SWEEP_INTERVAL).await;
        let overdue = pending
            .borrow()
            .front()
            .is_some_and(|p| p.deadline <= Instant::now());
        if overdue {
            return ClientError::Timeout(addr);
        }
    }
}

/// Connects, then writes queued requests and reads answers until either
/// side fails; returns why it stopped.
async fn drive(
    addr: SocketAddr,
    timeout: Duration,
    queued: LocalReceiver<Queued>,
    pending: Rc<RefCell<VecDeque<Pending>>>,
) -> ClientError {
    let stream = match TcpStream::connect_timeout(addr, timeout).await {
        Ok(stream) => stream,
        Err(e) => {
            let e: std::io::Error = e.into();
            return ClientError::Connect {
                addr,
                message: e.to_string(),
            };
        }
    };
    let _ = stream.set_nodelay(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (reader, writer) = stream.split();
    let mut frames = FrameReader::new(reader, fd);
    let reading = async {
        let limits = frame::Limits {
            frame_bytes_max: usize::MAX >> 1,
            ..frame::Limits::default()
        };
        loop {
            let buf = match frames.read_frame(&limits).await {
                Ok(Some(buf)) => buf,
                Ok(None) => return connection_error(addr, "closed by the broker"),
                Err(e) => return connection_error(addr, e),
            };
            let response = match Response::verify(buf) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let Some(Pending { id, reply, .. }) = pending.borrow_mut().pop_front() else {
                return connection_error(addr, "answer to no request");
            };
            if response.correlation_id != id {
                // A broker that cannot read a frame answers with id 0 and
                // closes: report what it said.
                let said = response.unpack().err();
                let _ = reply.send(Err(said
                    .clone()
                    .unwrap_or_else(|| connection_error(addr, "answers out of order"))));
                return said.unwrap_or_else(|| connection_error(addr, "answers out of order"));
            }
            let _ = reply.send(Ok(Some(response)));
        }
    };
    let writing = async {
        let mut writer = GatherWriter::new(fd, writer);
        loop {
            let next = match queued.recv().now_or_never() {
                Some(next) => next,
                None => {
                    if let Err(e) = writer.flush().await {
                        return connection_error(addr, e);
                    }
                    queued.recv().await
                }
            };
            let Some((request, written)) = next else {
                return ClientError::Closed;
            };
            writer.push(request);
            let send = written.is_some() || writer.queued_bytes() >= SEND_BYTES;
            if send && let Err(e) = writer.flush().await {
                return connection_error(addr, e);
            }
            if let Some(reply) = written {
                let _ = reply.send(Ok(None));
            }
        }
    };
    futures::pin_mut!(reading, writing);
    match futures::future::select(reading, writing).await {
        futures::future::Either::Left((e, _)) | futures::future::Either::Right((e, _)) => e,
    }
}

fn connection_error(addr: SocketAddr, e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection {
        addr,
        message: e.to_string(),
    }
}
