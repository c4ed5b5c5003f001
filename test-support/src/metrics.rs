//! Reading a service's `/metrics` (Prometheus text exposition) in tests.

use std::collections::BTreeMap;

/// Every sample of an exposition, keyed `name{label="value",…}` with the labels sorted by name
/// (`name` alone without labels), so a test can look one up whatever order the exporter wrote.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value);
    }
    samples
}

/// `GET /metrics` on `127.0.0.1:port`, parsed.
pub async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let answer = crate::http::http_call(port, "GET", "/metrics", &[], b"").await;
    assert_eq!(answer.status, 200, "GET /metrics: {answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{answer:?}"
    );
    parse_metrics(&answer.body)
}

/// Like [`scrape`], but `None` while nothing listens on `port` yet (a service starting).
pub async fn try_scrape(port: u16) -> Option<BTreeMap<String, f64>> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(scrape(port).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_comments_skipped() {
        let text = "# TYPE x counter\nx{b=\"2\",a=\"1\"} 3\ny 4.5\nz_bucket{le=\"+Inf\"} 7\n";
        let samples = parse_metrics(text);
        assert_eq!(samples["x{a=\"1\",b=\"2\"}"], 3.0);
        assert_eq!(samples["y"], 4.5);
        assert_eq!(samples["z_bucket{le=\"+Inf\"}"], 7.0);
        assert_eq!(samples.len(), 3);
    }
}
