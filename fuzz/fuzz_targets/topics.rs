//! Topic and filter validation and matching: never panics, and the matching rules hold for
//! whatever validates. Input: `filter \n topic`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchwork::pubsub::topic::{literal_prefix, matches, validate_filter, validate_topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (filter, topic) = text.split_once('\n').unwrap_or((text, text));
    let filter_ok = validate_filter(filter).is_ok();
    let topic_ok = validate_topic(topic).is_ok();
    if !(filter_ok && topic_ok) {
        return;
    }
    let matched = matches(filter, topic);
    // A topic is a filter without wildcards that matches exactly itself.
    if validate_filter(topic).is_ok() {
        assert!(matches(topic, topic), "{topic:?} does not match itself");
        assert_eq!(matches(topic, filter), topic == filter || matches(topic, filter));
    }
    // `#` matches every topic not starting with `$`.
    assert_eq!(matches("#", topic), !topic.starts_with('$'));
    // Everything a filter matches starts with its literal prefix (`a` for `a/#` aside: the
    // prefix without its last `/`).
    let prefix = literal_prefix(filter);
    assert!(filter.starts_with(prefix));
    if matched {
        let bare = prefix.strip_suffix('/').unwrap_or(prefix);
        assert!(
            topic.starts_with(prefix) || topic == bare,
            "{filter:?} matched {topic:?} outside its prefix {prefix:?}"
        );
    }
});
