//! The admin listener: a small HTTP/1.1 server (one request per
//! connection, `Connection: close`) for `/metrics`, `/health`,
//! `/v1/overview` and the console.
//!
//! It runs as a task on shard 0 rather than on a thread of its own: what it
//! serves is gathered over the shard mesh, which only shards can send on, so
//! a thread would need a bridge into a shard anyway; and its load (a scrape
//! every few seconds, a console refreshing once a second) is small next to
//! a shard's. It blocks nothing: sockets are glommio's, a request head is
//! read under a size limit and a timeout, and at most
//! [`CONNECTIONS_MAX`] connections are served at once (more are closed).

use super::{console, exposition, health, overview, snapshot};
use crate::conn::Stop;
use crate::logging::Repeated;
use crate::shard::Shard;
use futures::future::{Either, select};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use std::rc::Rc;
use std::time::Duration;

/// Admin connections served at once.
pub const CONNECTIONS_MAX: u64 = 16;
/// Largest request head read (request line and headers).
const HEAD_BYTES_MAX: usize = 8 << 10;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts admin connections until `stop` fires.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener, stop: Stop) {
    let slots = Rc::new(Semaphore::new(CONNECTIONS_MAX));
    let failures = Repeated::default();
    let refused = Repeated::default();
    loop {
        let accepted = match select(Box::pin(listener.accept()), stop.clone()).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => return,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(count) = failures.hit() {
                    tracing::warn!(shard = shard.id, error = %e, failed_accepts = count, "admin listener: accept failing");
                }
                // Out of descriptors, most likely: let some close first.
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.try_acquire_static_permit(1) else {
            // Dropped: the client sees the connection close.
            if let Some(count) = refused.hit() {
                tracing::warn!(
                    shard = shard.id,
                    refused_connections = count,
                    "admin listener: {CONNECTIONS_MAX} connections busy, more closed"
                );
            }
            continue;
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            if let Err(e) = answer(&shard, stream).await {
                tracing::debug!(shard = shard.id, error = %e, "admin connection");
            }
            drop(slot);
        })
        .detach();
    }
}

/// A response: status, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn json(status: &'static str, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

async fn answer(shard: &Shard, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = vec![0u8; HEAD_BYTES_MAX];
    let mut filled = 0;
    let (method, path) = loop {
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default().to_owned();
                let path = request.path.unwrap_or_default().to_owned();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if filled < head.len() => continue,
            Ok(httparse::Status::Partial) | Err(_) => {
                let response = Response::text("400 Bad Request", "bad request head\n");
                return write(&mut stream, &response, false).await;
            }
        }
    };
    let response = route(shard, &method, &path).await;
    write(&mut stream, &response, method == "HEAD").await
}

async fn route(shard: &Shard, method: &str, target: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text("405 Method Not Allowed", "GET only\n");
    }
    // Query strings (a console's cache buster) do not change the answer.
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: exposition::CONTENT_TYPE,
            body: exposition::render(snapshot::gather(shard).await).into_bytes(),
        },
        "/health" => {
            let health = health::check(&snapshot::gather(shard).await);
            let status = if health.ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let body = serde_json::json!({
                "status": if health.ready { "ready" } else { "not ready" },
                "reasons": health.reasons,
                "warnings": health.warnings,
            });
            Response::json(status, &body)
        }
        "/v1/overview" => {
            let snapshot = snapshot::gather(shard).await;
            Response::json("200 OK", &overview::render(&snapshot))
        }
        _ => match console::asset(path) {
            Some((content_type, body)) => Response {
                status: "200 OK",
                content_type,
                body: body.to_vec(),
            },
            None => Response::text("404 Not Found", "no such page\n"),
        },
    }
}

async fn write(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(&response.body).await?;
    }
    stream.flush().await?;
    stream.close().await
}
