//! The console's static files, embedded in the binary: a page, its script
//! and style, and uPlot (vendored, see `console/VENDORED.md`). No build
//! step: the script is plain JavaScript that polls `/v1/overview`.

/// The file served at `path`, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    const HTML: &str = "text/html; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    const CSS: &str = "text/css; charset=utf-8";
    Some(match path {
        "/" | "/console" => (HTML, include_bytes!("console/index.html")),
        "/assets/console.js" => (JS, include_bytes!("console/console.js")),
        "/assets/console.css" => (CSS, include_bytes!("console/console.css")),
        "/assets/uPlot.iife.min.js" => (JS, include_bytes!("console/uPlot.iife.min.js")),
        "/assets/uPlot.min.css" => (CSS, include_bytes!("console/uPlot.min.css")),
        _ => return None,
    })
}
