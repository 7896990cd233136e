//! The listeners' connection handling: limits, hand-over, HTTP/2 streams and the drain.

use super::*;

/// A thread whose queue is full is passed over; a stopped one is reported; with every queue
/// full the connection comes back to wait.
#[test]
fn a_connection_goes_to_the_next_thread_with_room() {
    let (full, _full_rx) = mpsc::channel::<u32>(1);
    full.try_send(0).expect("room for one");
    let (free, mut free_rx) = mpsc::channel::<u32>(1);
    let senders = [full.clone(), free];
    assert!(matches!(hand_over(&senders, 0, 7), Ok((true, 1))));
    assert_eq!(free_rx.try_recv().ok(), Some(7));
    assert!(matches!(hand_over(&senders, 1, 8), Ok((true, 1))));
    assert_eq!(hand_over(&senders, 0, 9).err(), Some(9), "both full");
    drop(free_rx);
    assert!(
        matches!(hand_over(&senders, 1, 10), Ok((false, 1))),
        "stopped"
    );
}

use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;

/// Sets its flag when dropped.
pub(super) struct Dropped(pub(super) Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Answers 200 `ok` to every request.
async fn answer_ok(_req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    Response::new(
        http_body_util::Full::new(Bytes::from_static(b"ok"))
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// A server whose connections have `first_request` as their limit, answering 200 to all.
async fn quick_to_close(first_request: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        first_request,
        ..Limits::DEFAULT
    };
    let mut connections = Connections::new(answer_ok, limits);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            connections.serve(stream, peer, None);
        }
    });
    addr
}

/// An HTTP/2 connection without a stream for the keep-alive limit (here 1.5 s) is closed,
/// gracefully (a GOAWAY), as hyper closes an idle HTTP/1 one; one whose answer is still
/// being sent is not.
#[tokio::test]
async fn an_http2_connection_without_a_stream_is_closed_after_the_keep_alive_limit() {
    // `/slow` answers a body that ends after 4 s.
    let handler = |req: Request<Incoming>, _peer: SocketAddr| async move {
        let slow = req.uri().path() == "/slow";
        let frames = futures::stream::once(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(4000)).await;
            }
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"ok")))
        });
        Response::new(StreamBody::new(frames).boxed())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        first_request: Duration::from_millis(1000),
        header_read: Duration::from_millis(1500),
        ..Limits::DEFAULT
    };
    let mut connections = Connections::new(handler, limits);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            connections.serve(stream, peer, None);
        }
    });
    let connect = async || {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("handshake");
        (sender, tokio::spawn(connection))
    };
    let get = |path: &str| {
        Request::get(format!("http://flowgate{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request")
    };
    // Asked once, then idle: closed after the limit.
    let (mut sender, connection) = connect().await;
    let answer = sender.send_request(get("/")).await.expect("answered");
    answer.into_body().collect().await.expect("body");
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed by flowgate")
        .expect("task")
        .expect("closed with a GOAWAY, not cut");
    // An answer still coming past the limit: the connection stays, and so does the answer.
    let (mut sender, connection) = connect().await;
    let answer = sender.send_request(get("/slow")).await.expect("answered");
    let body = answer.into_body().collect().await.expect("the whole body");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"ok"));
    assert!(!connection.is_finished(), "open while its answer came");
}

/// At shutdown a connection that never finished its first request (its headers stalled)
/// is closed at once, not waited for until the drain period cuts it.
#[tokio::test]
async fn the_drain_closes_a_connection_that_never_asked_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut connections = Connections::new(answer_ok, Limits::DEFAULT);
    let cut = connections.cut.clone();
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let (stream, peer) = listener.accept().await.expect("accept");
    connections.serve(stream, peer, None);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: flo")
        .await
        .expect("part of a request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    connections.drain(Duration::from_secs(3)).await;
    assert!(!cut.is_cancelled(), "closed by the drain, not cut after it");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_at_the_first_request_limit() {
    use tokio::io::AsyncReadExt;
    let addr = quick_to_close(Duration::from_millis(200)).await;
    // Nothing at all; a piece of the HTTP/2 preface; the whole preface and nothing else.
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice();
    for sent in [b"".as_slice(), &h2[..10], h2] {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(sent).await.expect("write");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("still open after sending {sent:?}"))
            .expect("closed, not failed");
    }
}

#[tokio::test]
async fn a_kept_alive_connection_outlives_the_first_request_limit() {
    use tokio::io::AsyncReadExt;
    let addr = quick_to_close(Duration::from_millis(200)).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: flowgate\r\n\r\n")
            .await
            .expect("request");
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        // Idle past the first request's limit: only the keep-alive limit applies now.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Past the connection limit, accepting waits: a new connection is served once an open one
/// closes, not before.
#[tokio::test]
async fn past_the_connection_limit_a_new_connection_waits_for_one_to_close() {
    use tokio::io::AsyncReadExt;

    let (background, shutdown, cut) = (
        TaskTracker::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let threads = Threads::start(
        vec![answer_ok],
        &background,
        &shutdown,
        Duration::ZERO,
        &cut,
        1,
    )
    .expect("threads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(threads.serve(listener, shutdown.clone()));
    let ask = async |client: &mut TcpStream, wait: Duration| {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: flowgate\r\n\r\n")
            .await
            .expect("request");
        let mut answer = vec![0; 1024];
        let n = tokio::time::timeout(wait, client.read(&mut answer))
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&answer[..n.expect("read")]).to_string())
    };
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let answer = ask(&mut first, Duration::from_secs(5))
        .await
        .expect("served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The kernel queues the second (its connect returns); flowgate does not take it yet.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(ask(&mut second, Duration::from_millis(500)).await, None);
    drop(first);
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut answer))
        .await
        .expect("served once the first closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    shutdown.cancel();
    assert!(serving.await.expect("serve"), "stopped cleanly");
}

/// A server answering each request with an endless body, whose write stall limit is 300 ms;
/// `dropped` fires when the first answer is let go.
async fn endless_answers() -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let (tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let handler = move |_req: Request<Incoming>, _peer: SocketAddr| {
        let guard = Dropped(tx.lock().ok().and_then(|mut tx| tx.take()));
        async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = futures::stream::repeat_with(move || {
                let _held = &guard;
                Ok::<_, std::io::Error>(Frame::data(chunk.clone()))
            });
            Response::new(StreamBody::new(frames).boxed())
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = Limits {
        write_stall: Duration::from_millis(300),
        ..Limits::DEFAULT
    };
    let mut connections = Connections::new(handler, limits);
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        connections.serve(stream, peer, None);
        std::future::pending::<()>().await;
    });
    (addr, dropped)
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_after_the_write_stall_limit() {
    let (addr, dropped) = endless_answers().await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: flowgate\r\n\r\n")
        .await
        .expect("request");
    // The client reads nothing: the socket's buffers fill, then the write waits.
    tokio::time::timeout(Duration::from_secs(20), dropped)
        .await
        .expect("the answer is let go once writing it stalled")
        .expect("dropped, not forgotten");
    drop(client);
}

/// An HTTP/2 client that reads its connection but grants one stream no more room: no write
/// ever waits, yet the answer is let go after the limit.
#[tokio::test]
async fn an_http2_stream_given_no_room_lets_go_of_its_answer_after_the_write_stall_limit() {
    let (addr, dropped) = endless_answers().await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get("http://flowgate/")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let answer = sender.send_request(request).await.expect("answered");
    assert_eq!(answer.status(), hyper::StatusCode::OK);
    // The body is never read, so its stream's window is never given back; the connection
    // (pings, other streams) goes on being read.
    tokio::time::timeout(Duration::from_secs(20), dropped)
        .await
        .expect("the answer is let go once its stream stalled")
        .expect("dropped, not forgotten");
    drop(answer);
}

#[tokio::test]
async fn a_stream_still_open_after_the_drain_is_cut_while_its_settle_can_run() {
    let (tx, settled) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    // An endless answer whose body, when let go, starts work of its own (as a stream's
    // settle and abort are): it runs only if the runtime still does.
    struct Settles(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Settles {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send(());
                });
            }
        }
    }
    let handler = move |_req: Request<Incoming>, _peer: SocketAddr| {
        let guard = Settles(tx.lock().ok().and_then(|mut tx| tx.take()));
        async move {
            let frames = futures::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
                    guard,
                ))
            });
            Response::new(StreamBody::new(frames).boxed())
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut connections = Connections::new(handler, Limits::DEFAULT);
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let (stream, peer) = listener.accept().await.expect("accept");
    connections.serve(stream, peer, None);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: flowgate\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    connections.drain(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .expect("the stream's body was let go within the drain")
        .expect("and its work ran");
    drop(client);
}
