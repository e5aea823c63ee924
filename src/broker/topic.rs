//! Topic filters: validation and matching with `+` and `#` (MQTT 3.1.1, section 4.7).

/// True when `filter` is a valid filter: `#` only as the whole last level, `+` only as a whole
/// level, not empty.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

/// True when a topic name is valid for PUBLISH: not empty, no wildcards.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// True when `topic` matches `filter`. Wildcards at the first level do not match topics
/// starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_specification_says() {
        assert!(matches("amr/#", "amr/gw1/status"));
        assert!(matches("amr/#", "amr"));
        assert!(matches("#", "amr/gw1"));
        assert!(matches("amr/+/status", "amr/gw1/status"));
        assert!(!matches("amr/+/status", "amr/gw1/reading/m1"));
        assert!(matches("amr/+/reading/+", "amr/gw1/reading/m1"));
        assert!(!matches("amr/+", "amr/gw1/status"));
        assert!(matches("amr/gw1/status", "amr/gw1/status"));
        assert!(!matches("amr/gw1", "amr/gw1/status"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }

    #[test]
    fn filters_are_validated() {
        assert!(valid_filter("a/#"));
        assert!(valid_filter("+/b/+"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a+/b"));
        assert!(!valid_filter(""));
        assert!(valid_topic("a/b"));
        assert!(!valid_topic("a/+"));
    }
}
