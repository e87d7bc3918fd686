//! A may_minihttp "hello" server, the speed to beat in the HTTP comparison: `hello_may ADDR`.
//! It stays here, never in the product (README.md, "Decisions and why").

use may_minihttp::{HttpServer, HttpService, Request, Response};

#[derive(Clone)]
struct Hello;

impl HttpService for Hello {
    fn call(&mut self, _req: Request, res: &mut Response) -> std::io::Result<()> {
        res.body("Hello, World!");
        Ok(())
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let server = HttpServer(Hello).start(&addr)?;
    println!("listening on {addr}");
    server
        .join()
        .map_err(|_| std::io::Error::other("server thread panicked"))
}
