//! The baseline of `loadbench percore`: stock Pingora proxying every request to one fixed HTTP
//! peer, one worker thread, nothing else (no logging, no filters).
//! `stock-pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT`

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

struct Fixed {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

/// The value after `flag` in the command line.
fn arg(args: &[String], flag: &str) -> std::result::Result<String, String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| {
            format!("missing {flag} ADDR (usage: stock-pingora --listen ADDR --upstream ADDR)")
        })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match (arg(&args, "--listen"), arg(&args, "--upstream")) {
        (Ok(l), Ok(u)) => (l, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("stock-pingora: {e}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        // sluice runs one thread on a single-threaded runtime too: the ratio compares code, not runtimes.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Fixed { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
