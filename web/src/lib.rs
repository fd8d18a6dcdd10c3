//! The Patchwork dashboard's static files, embedded in the binary (plain HTML/JS/CSS, no build
//! step).

use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The apps built on Patchwork (`apps/{name}/…`), served at `/apps/{name}/…`.
#[derive(RustEmbed)]
#[folder = "apps/"]
struct Apps;

/// The file's bytes and its MIME type, if it exists.
pub fn get(name: &str) -> Option<(Vec<u8>, &'static str)> {
    let file = Assets::get(name)?;
    Some((file.data.into_owned(), mime(name)))
}

/// A file of an app (`path` inside `apps/{app}/`), and its MIME type. Only plain relative
/// paths: no empty, `.` or `..` segments, no backslashes.
pub fn app_file(app: &str, path: &str) -> Option<(Vec<u8>, &'static str)> {
    let plain = |p: &str| {
        !p.is_empty()
            && !p.contains('\\')
            && p.split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    };
    if !plain(app) || app.contains('/') || !plain(path) {
        return None;
    }
    let name = format!("{app}/{path}");
    let file = Apps::get(&name)?;
    Some((file.data.into_owned(), mime(&name)))
}

fn mime(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
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
        Some("webp") => "image/webp",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("mp3") => "audio/mpeg",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}
