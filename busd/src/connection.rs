//! One client connection: the `Hello` handshake, then the publisher or subscriber loop.
//!
//! How a connection reads, writes and ends is in [`crate::peer`], what every connection
//! shares in [`crate::context`]; this module only says hello and hands over to the role.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use protocol::codec::decode_body;
use protocol::frame::peek_hello_version;
use protocol::{ClientFrame, ErrorCode, OLDEST_VERSION, PROTOCOL_VERSION, Role, ServerFrame};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::Config;
use crate::context::Context;
use crate::peer::{Close, Outbound, Reader, close};
use crate::reader::{FrameReader, Limits};
use crate::{publisher, subscriber};

/// What a client said in its `Hello`.
struct Hello {
    role: Role,
    name: String,
    instance: u64,
}

/// Serves one connection to its end.
pub async fn handle(socket: TcpStream, ctx: Arc<Context>) {
    let peer = socket
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let _ = socket.set_nodelay(true);
    let (rd, wr) = socket.into_split();
    let limits = Limits {
        max_frame: ctx.config.max_frame,
        frame_timeout: ctx.config.frame_timeout,
        budget: ctx.budget.clone(),
    };
    let mut reader = FrameReader::new(rd, limits);
    let mut out = Outbound::new(wr, ctx.config.max_frame);
    // The handshake's and the refusals' futures are boxed: a connection's task is as large
    // as its largest state, and only the role's loop should decide that for a connection
    // that stays (an idle subscriber costs little more than it).
    let hello = Box::pin(async {
        tokio::select! {
            hello = read_hello(&mut reader, &ctx.config) => hello,
            _ = ctx.shutdown.stop_reading.cancelled() => {
                Err(Close::refuse(ErrorCode::ShuttingDown, "busd is shutting down"))
            }
        }
    })
    .await;
    let hello = match hello {
        Ok(hello) => hello,
        Err(reason) => return Box::pin(close(reader, out, reason, &peer)).await,
    };
    debug!(%peer, role = ?hello.role, name = %hello.name, "hello");
    let _slot = match ctx.slots.take(hello.role) {
        Ok(slot) => slot,
        Err(full) => {
            let reason = Close::refuse(ErrorCode::TooManyConnections, full.to_string());
            return Box::pin(close(reader, out, reason, &peer)).await;
        }
    };
    reader.hello_accepted();
    let connection = ctx.connections.fetch_add(1, Relaxed);
    let claim = match hello.role {
        Role::Subscriber => None,
        Role::Publisher => match ctx
            .publishers
            .claim(&hello.name, hello.instance, connection)
        {
            Ok(claim) => Some(claim),
            Err(_) => {
                let message = format!(
                    "publisher name {:?} is in use by another live connection; \
                     every publisher process needs its own name (ingest --origin)",
                    hello.name
                );
                let reason = Close::refuse(ErrorCode::NameInUse, message);
                return Box::pin(close(reader, out, reason, &peer)).await;
            }
        },
    };
    out.push(&ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        epoch: ctx.bus.epoch(),
        head_seq: ctx.bus.head(),
        max_frame: ctx.config.max_frame as u64,
        follows: ctx.follows,
    });
    // Now, not with the first reply: a client waits for Welcome before it subscribes.
    if let Err(err) = out.flush().await {
        return debug!(%peer, %err, "connection lost after Hello");
    }
    // Boxed too: the role's loop is allocated once at its own size, instead of inside a
    // task sized for the handshake's locals as well.
    match claim {
        Some(claim) => {
            Box::pin(publisher::run(
                reader,
                out,
                &ctx,
                &claim,
                hello.instance,
                &peer,
            ))
            .await;
        }
        None => Box::pin(subscriber::run(reader, out, &ctx, hello.name, &peer)).await,
    }
}

async fn read_hello(reader: &mut Reader, config: &Config) -> Result<Hello, Close> {
    let body = match tokio::time::timeout(config.hello_timeout, reader.next()).await {
        Err(_) => {
            let limit = humantime::format_duration(config.hello_timeout);
            return Err(Close::refuse(
                ErrorCode::HelloTimeout,
                format!("no Hello within {limit}"),
            ));
        }
        Ok(None) => return Err(Close::Quiet("closed before Hello".into())),
        Ok(Some(Err(err))) => return Err(err.into()),
        Ok(Some(Ok(body))) => body,
    };
    match decode_body::<ClientFrame>(&body) {
        Ok(ClientFrame::Hello {
            version,
            role,
            name,
            token,
            instance,
        }) => {
            check_version(version)?;
            check_token(config.token.as_deref(), token.as_deref())?;
            Ok(Hello {
                role,
                name,
                instance,
            })
        }
        Ok(_) => Err(Close::refuse(
            ErrorCode::ExpectedHello,
            "the first frame must be Hello",
        )),
        Err(err) => match peek_hello_version(&body) {
            Some(version) => check_version(version).and(Err(err.into())),
            None => Err(err.into()),
        },
    }
}

fn check_version(version: u32) -> Result<(), Close> {
    if (OLDEST_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Ok(());
    }
    Err(Close::refuse(
        ErrorCode::VersionMismatch,
        format!(
            "client speaks protocol version {version}, busd speaks versions \
             {OLDEST_VERSION} to {PROTOCOL_VERSION}"
        ),
    ))
}

fn check_token(expected: Option<&str>, given: Option<&str>) -> Result<(), Close> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if given.is_some_and(|given| constant_time_eq(expected.as_bytes(), given.as_bytes())) {
        Ok(())
    } else {
        Err(Close::refuse(
            ErrorCode::Unauthorized,
            "missing or wrong token",
        ))
    }
}

/// Compares without an early exit, so response timing does not reveal the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(check_token(None, None).is_ok());
        assert!(check_token(None, Some("x")).is_ok());
        assert!(check_token(Some("secret"), Some("secret")).is_ok());
        assert!(check_token(Some("secret"), Some("secreT")).is_err());
        assert!(check_token(Some("secret"), Some("secret2")).is_err());
        assert!(check_token(Some("secret"), None).is_err());
    }

    #[test]
    fn a_version_mismatch_names_both_versions() {
        let Err(Close::Refuse(code, message)) = check_version(PROTOCOL_VERSION + 1) else {
            panic!("accepted another version");
        };
        assert_eq!(code, ErrorCode::VersionMismatch);
        assert!(message.contains(&(PROTOCOL_VERSION + 1).to_string()));
        assert!(message.contains(&PROTOCOL_VERSION.to_string()));
    }
}
