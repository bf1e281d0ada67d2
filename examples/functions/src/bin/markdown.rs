//! `markdown`: an HTTP function that renders the Markdown in the request
//! body to HTML.
use std::io::Read;

fn main() {
    let mut md = String::new();
    std::io::stdin()
        .read_to_string(&mut md)
        .expect("reading the body");
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new(&md));
    print!("Content-Type: text/html; charset=utf-8\r\n\r\n{html}");
}
