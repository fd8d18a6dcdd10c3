//! Driving Felt's TD console in a browser: shared by the library's Felt test and the process
//! tests (which compile this file with `#[path]`, next to `browser.rs`).

use serde_json::Value;

use super::browser::Browser;

/// The TD's acknowledged actions so far: `[{seq, action, t0, ack}]`.
pub async fn actions(td: &Browser) -> Vec<Value> {
    td.js("return felt.actions;", vec![])
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Clicks `css` on the TD console and waits until the action is acknowledged and the console
/// shows it (it re-renders then: inputs found before that would go stale).
pub async fn act(td: &Browser, css: &str) {
    let before = actions(td).await.len();
    td.click(css).await;
    td.wait_until(&format!(
        "return felt.actions.length > {before} && felt.state.audit_seq >= felt.actions[felt.actions.length - 1].seq;"
    ))
    .await;
}
