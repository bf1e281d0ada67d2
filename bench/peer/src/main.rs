//! `flint-bench-peer MODULE ADDR`: serves the CGI function MODULE on ADDR,
//! each request a fresh wasmtime instance (the module compiled once), no
//! VM. The baseline for the gateway benchmark.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::p1::{self as preview1, WasiP1Ctx};
use wasmtime_wasi::WasiCtxBuilder;

struct Peer {
    engine: Engine,
    module: Module,
    linker: Linker<WasiP1Ctx>,
}

fn invoke(peer: &Peer, env: Vec<(String, String)>, body: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
    let out = MemoryOutputPipe::new(16 << 20);
    let ctx = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(body))
        .stdout(out.clone())
        .envs(&env)
        .args(&["fn.wasm"])
        .build_p1();
    let mut store = Store::new(&peer.engine, ctx);
    let instance = peer.linker.instantiate(&mut store, &peer.module)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    if let Err(e) = start.call(&mut store, ()) {
        if e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|x| x.0) != Some(0) {
            return Err(e);
        }
    }
    drop(store);
    Ok(out.contents().to_vec())
}

async fn handle(peer: Arc<Peer>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let env = vec![
        ("REQUEST_METHOD".to_string(), parts.method.to_string()),
        ("PATH_INFO".to_string(), parts.uri.path().to_string()),
        ("QUERY_STRING".to_string(), parts.uri.query().unwrap_or("").to_string()),
        ("CONTENT_LENGTH".to_string(), body.len().to_string()),
    ];
    let out = tokio::task::spawn_blocking(move || invoke(&peer, env, body)).await;
    match out {
        Ok(Ok(out)) => {
            // The CGI header block, then the body.
            let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(0);
            Response::new(Full::new(Bytes::from(out[split..].to_vec())))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"error\n")));
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

#[tokio::main]
async fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let module_path = args.next().expect("MODULE");
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let engine = Engine::default();
    let module = Module::from_file(&engine, &module_path)?;
    let mut linker = Linker::new(&engine);
    preview1::add_to_linker_sync(&mut linker, |c| c)?;
    let peer = Arc::new(Peer { engine, module, linker });
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(wasmtime::Error::from)?;
    eprintln!("peer: serving {module_path} on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await.map_err(wasmtime::Error::from)?;
        let peer = peer.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(handle(peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
