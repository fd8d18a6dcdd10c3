//! The Patchwork dashboard's static files, embedded in the binary (plain HTML/JS/CSS, no build
//! step).

use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The file's bytes and its MIME type, if it exists.
pub fn get(name: &str) -> Option<(Vec<u8>, &'static str)> {
    let file = Assets::get(name)?;
    let mime = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    };
    Some((file.data.into_owned(), mime))
}
