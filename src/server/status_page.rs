//! The HTML of `/status`: one self-contained page (inline CSS and SVG, no script, no
//! external asset: the box may be offline) rendered from a [`StatusReport`]. Every number
//! also carries its exact value in a `data-value` attribute, so tests (and scrapers) read
//! the same figures `/status.json` has.
//!
//! Owns: markup and formatting. Must not: gather data (that is `status.rs`).

use super::status::{ChartPoint, StatusReport};
use std::fmt::Write;

/// The page's `Content-Security-Policy`: no script, no request to anywhere, not framed;
/// inline styles only (the page's `<style>` and the bars' widths).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#1d2329;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .5em;border-bottom:1px solid #d8dee4;padding-bottom:.2em}
.muted{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:.7em 1em;min-width:12em}
.card b{display:block;font-size:1.5em}table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eaeef2;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.bar{background:#eaeef2;border-radius:4px;height:14px;overflow:hidden;width:100%}.bar span{display:block;height:100%;background:#2f81f7}
.up{color:#1a7f37}.down{color:#cf222e}.limited{color:#9a6700}.unknown{color:#57606a}.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5em 1em;margin:.5em 0}
.legend i{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}code{font-size:.95em}";

/// `s` safe inside HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

fn ratio(r: Option<f64>) -> (String, String) {
    match r {
        Some(r) => (format!("{:.1}%", r * 100.0), format!("{r:.6}")),
        None => ("–".into(), String::new()),
    }
}

fn ago(now: u64, at: u64) -> String {
    format!("{} ago", human_duration(now.saturating_sub(at)))
}

/// A stacked bar chart of bytes served from the cache and from upstreams.
fn chart(id: &str, points: &[ChartPoint], label_every: usize, unit: &str) -> String {
    let (w, h, pad) = (720.0_f64, 140.0_f64, 18.0_f64);
    let max = points
        .iter()
        .map(|p| p.served_cache_bytes + p.served_upstream_bytes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bw = w / points.len().max(1) as f64;
    let mut svg = format!(
        "<svg id=\"{id}\" viewBox=\"0 0 {w} {}\" width=\"100%\" role=\"img\" aria-label=\"bytes served per {unit}\" xmlns=\"http://www.w3.org/2000/svg\">",
        h + pad
    );
    let _ = write!(
        svg,
        "<line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#d8dee4\"/><text x=\"2\" y=\"11\" font-size=\"10\" fill=\"#57606a\">{}</text>",
        esc(&human_bytes(max as u64))
    );
    let n = points.len();
    for (i, p) in points.iter().enumerate() {
        let x = i as f64 * bw;
        let ch = p.served_cache_bytes as f64 / max * (h - 14.0);
        let uh = p.served_upstream_bytes as f64 / max * (h - 14.0);
        let _ = write!(
            svg,
            "<g data-at=\"{}\" data-cache=\"{}\" data-upstream=\"{}\"><title>{}: {} from cache, {} from upstreams</title><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ch:.1}\" fill=\"#2f81f7\"/><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{uh:.1}\" fill=\"#fb8f44\"/></g>",
            p.at,
            p.served_cache_bytes,
            p.served_upstream_bytes,
            (n - 1 - i),
            esc(&human_bytes(p.served_cache_bytes)),
            esc(&human_bytes(p.served_upstream_bytes)),
            h - ch,
            (bw - 1.0).max(0.5),
            h - ch - uh,
            (bw - 1.0).max(0.5),
        );
        if (n - 1 - i).is_multiple_of(label_every) {
            let label = if n - 1 - i == 0 {
                "now".to_string()
            } else {
                format!("-{}{unit}", n - 1 - i)
            };
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#57606a\" text-anchor=\"middle\">{label}</text>",
                (x + bw / 2.0).clamp(12.0, w - 12.0),
                h + 13.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// "WAN saved": today, 7 days and since the first saving, per upstream, and a 30-day chart.
fn savings(h: &mut String, r: &StatusReport) {
    let s = &r.savings;
    let since = s.since.map_or_else(
        || "no saving yet".to_string(),
        |t| {
            format!(
                "since {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)
                )
            )
        },
    );
    let _ = write!(
        h,
        "<h2>WAN saved</h2><p class=\"muted\">Bytes sent from the cache or from another client's fill (bytes that did not cross the WAN), upstream requests avoided, and clients that joined a fill instead of starting their own; kept in the store ({}).</p><table id=\"savings\"><tr><th>upstream</th><th class=\"n\">today</th><th class=\"n\">last 7 days</th><th class=\"n\">in all</th><th class=\"n\">requests avoided (7 days)</th><th class=\"n\">clients collapsed (7 days)</th></tr>",
        esc(&since)
    );
    let all = crate::store::UpstreamSavings {
        upstream: "all upstreams".into(),
        today: s.today,
        last_7_days: s.last_7_days,
        total: s.total,
    };
    for (i, u) in s.upstreams.iter().chain(std::iter::once(&all)).enumerate() {
        let id = if i == s.upstreams.len() {
            "all".to_string()
        } else {
            esc(&u.upstream)
        };
        let _ = write!(
            h,
            "<tr data-upstream=\"{id}\" data-today=\"{}\" data-week=\"{}\" data-total=\"{}\" data-requests-week=\"{}\" data-collapsed-week=\"{}\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            u.today.bytes,
            u.last_7_days.bytes,
            u.total.bytes,
            u.last_7_days.requests,
            u.last_7_days.collapsed,
            esc(&u.upstream),
            human_bytes(u.today.bytes),
            human_bytes(u.last_7_days.bytes),
            human_bytes(u.total.bytes),
            u.last_7_days.requests,
            u.last_7_days.collapsed,
        );
    }
    h.push_str("</table><h3>Bytes saved per day, last 30 days (UTC)</h3>");
    let days: Vec<ChartPoint> = s
        .daily
        .iter()
        .map(|(at, saved)| ChartPoint {
            at: at + 86_400,
            served_cache_bytes: saved.bytes,
            served_upstream_bytes: 0,
        })
        .collect();
    h.push_str(&chart("chart-saved", &days, 5, "d"));
}

fn card(html: &mut String, id: &str, title: &str, shown: &str, value: &str) {
    let _ = write!(
        html,
        "<div class=\"card\">{}<b id=\"{id}\" data-value=\"{}\">{}</b></div>",
        esc(title),
        esc(value),
        esc(shown)
    );
}

/// The whole page.
pub fn render(r: &StatusReport) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><meta http-equiv=\"refresh\" content=\"15\"><link rel=\"icon\" href=\"data:,\"><title>sparkcr-edge status</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        h,
        "<h1>sparkcr-edge</h1><div class=\"muted\">version <span id=\"version\">{}</span> · up <span id=\"uptime\" data-value=\"{}\">{}</span> · this page refreshes every 15 s · <a href=\"/status.json\">JSON</a> · <a href=\"/metrics\">metrics</a></div>",
        esc(&r.version),
        r.uptime_seconds,
        human_duration(r.uptime_seconds)
    );
    for w in &r.warnings {
        let _ = write!(h, "<div class=\"warn\">{}</div>", esc(w));
    }
    // At a glance.
    h.push_str("<h2>At a glance</h2><div class=\"cards\">");
    let (hr, hv) = ratio(r.last_hour.hit_ratio);
    card(&mut h, "hit-ratio-hour", "Hit ratio, last hour", &hr, &hv);
    let (dr, dv) = ratio(r.last_day.hit_ratio);
    card(&mut h, "hit-ratio-day", "Hit ratio, last day", &dr, &dv);
    card(
        &mut h,
        "wan-saved",
        "WAN bytes saved (served from cache)",
        &human_bytes(r.wan_bytes_saved),
        &r.wan_bytes_saved.to_string(),
    );
    card(
        &mut h,
        "fills-count",
        "Fills in progress",
        &r.fills.len().to_string(),
        &r.fills.len().to_string(),
    );
    h.push_str("</div>");
    // Store.
    let s = &r.store;
    let pct = if s.budget_bytes > 0 {
        (s.used_bytes as f64 / s.budget_bytes as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    let _ = write!(
        h,
        "<h2>Store</h2><div class=\"bar\" title=\"{pct:.1}% of the budget\"><span style=\"width:{pct:.1}%\"></span></div><p><span id=\"store-used\" data-value=\"{}\">{}</span> used of <span id=\"store-budget\" data-value=\"{}\">{}</span> ({pct:.1}%) · {} blobs, {} manifests · disk free: <span id=\"disk-free\" data-value=\"{}\">{}</span>{} · {} evictions ({})</p>",
        s.used_bytes,
        human_bytes(s.used_bytes),
        s.budget_bytes,
        human_bytes(s.budget_bytes),
        s.blobs,
        s.manifests,
        s.disk_free_bytes.map_or(String::new(), |v| v.to_string()),
        s.disk_free_bytes.map_or("unknown".into(), human_bytes),
        s.disk_total_bytes.map_or(String::new(), |t| format!(" of {}", human_bytes(t))),
        s.evictions,
        human_bytes(s.evicted_bytes),
    );
    // Traffic.
    h.push_str("<h2>Traffic</h2><table id=\"traffic\"><tr><th></th><th class=\"n\">hits</th><th class=\"n\">misses</th><th class=\"n\">hit ratio</th><th class=\"n\">served from cache</th><th class=\"n\">served from upstreams</th><th class=\"n\">received from upstreams</th></tr>");
    for (id, name, w) in [
        ("hour", "last hour", &r.last_hour),
        ("day", "last day", &r.last_day),
    ] {
        let _ = write!(
            h,
            "<tr id=\"traffic-{id}\" data-hits=\"{}\" data-misses=\"{}\" data-served-cache=\"{}\" data-served-upstream=\"{}\" data-upstream=\"{}\"><td>{name} <span class=\"muted\">({})</span></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            w.hits,
            w.misses,
            w.served_cache_bytes,
            w.served_upstream_bytes,
            w.upstream_bytes,
            human_duration(w.seconds),
            w.hits,
            w.misses,
            ratio(w.hit_ratio).0,
            human_bytes(w.served_cache_bytes),
            human_bytes(w.served_upstream_bytes),
            human_bytes(w.upstream_bytes),
        );
    }
    h.push_str("</table><p class=\"legend muted\">blob bytes served:<i style=\"background:#2f81f7\"></i>from cache<i style=\"background:#fb8f44\"></i>from upstreams</p>");
    h.push_str("<h3>Last hour, per minute</h3>");
    h.push_str(&chart("chart-hour", &r.chart_hour, 10, "m"));
    h.push_str("<h3>Last day, per hour</h3>");
    h.push_str(&chart("chart-day", &r.chart_day, 4, "h"));
    savings(&mut h, r);
    // Fills.
    let _ = write!(
        h,
        "<h2>Fills in progress</h2><p class=\"muted\">Requests that joined a fill under way since start: {}. Ranged pieces of large blobs in flight: <span id=\"pieces\">{}</span>.</p>",
        r.singleflight_joins, r.fill_pieces_in_flight
    );
    if r.fills.is_empty() {
        h.push_str("<p id=\"fills-none\">None.</p>");
    } else {
        h.push_str("<table id=\"fills\"><tr><th>blob</th><th>repository</th><th class=\"n\">received</th><th class=\"n\">size</th><th>progress</th><th class=\"n\">joined</th><th class=\"n\">running</th></tr>");
        for f in &r.fills {
            let pct = f
                .size
                .filter(|s| *s > 0)
                .map(|s| (f.received as f64 / s as f64 * 100.0).min(100.0));
            let _ = write!(
                h,
                "<tr class=\"fill\" data-digest=\"{}\" data-received=\"{}\" data-size=\"{}\" data-joined=\"{}\"><td><code>{}</code></td><td>{}/{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><div class=\"bar\"><span style=\"width:{:.1}%\"></span></div></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&f.digest),
                f.received,
                f.size.map_or(String::new(), |s| s.to_string()),
                f.joined,
                esc(f.digest.get(..19).unwrap_or(&f.digest)),
                esc(&f.upstream),
                esc(&f.repo),
                human_bytes(f.received),
                f.size.map_or("unknown".into(), human_bytes),
                pct.unwrap_or(0.0),
                f.joined,
                human_duration(f.seconds as u64),
            );
        }
        h.push_str("</table>");
    }
    // Upstreams.
    h.push_str("<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>name</th><th>URL</th><th>state</th><th class=\"n\">requests</th><th class=\"n\">failures</th><th class=\"n\">latency (last / avg)</th><th class=\"n\">blob connections</th><th class=\"n\">received (last minute)</th><th class=\"n\">pull quota left</th><th>last error</th></tr>");
    for u in &r.upstreams {
        let latency = match (u.last_latency_ms, u.avg_latency_ms) {
            (Some(l), Some(a)) => format!("{l:.0} ms / {a:.0} ms"),
            _ => "–".into(),
        };
        let quota = match (u.quota_remaining, u.quota_limit) {
            (Some(left), limit) => {
                let of = limit.map_or(String::new(), |l| format!(" of {l}"));
                let window = u
                    .quota_window_seconds
                    .map_or(String::new(), |w| format!(" per {}", human_duration(w)));
                let when = u
                    .quota_at
                    .map_or(String::new(), |at| format!(" ({})", ago(r.now, at)));
                format!(
                    "<span class=\"quota\" data-value=\"{left}\">{left}{of}{window}{when}</span>"
                )
            }
            (None, _) => "–".into(),
        };
        let received = match u.received_bytes_per_second {
            Some(rate) => format!(
                "<span class=\"received\" data-value=\"{}\" data-seconds=\"{}\">{}/s</span>",
                u.received_bytes,
                u.received_seconds,
                human_bytes(rate.round() as u64)
            ),
            None => "–".into(),
        };
        let err = match (&u.last_error, u.last_error_at) {
            (Some(e), Some(at)) => format!("{} ({})", esc(e), ago(r.now, at)),
            _ => "–".into(),
        };
        let _ = write!(
            h,
            "<tr class=\"upstream\" data-name=\"{}\" data-state=\"{}\" data-requests=\"{}\"><td>{}</td><td><code>{}</code></td><td class=\"{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{latency}</td><td class=\"n\">{} / {}</td><td class=\"n\">{received}</td><td class=\"n\">{quota}</td><td>{err}</td></tr>",
            esc(&u.name),
            u.state,
            u.requests,
            esc(&u.name),
            esc(&u.url),
            u.state,
            u.state,
            u.requests,
            u.failures,
            u.blob_connections,
            u.max_blob_connections,
        );
        if u.endpoints.len() > 1 {
            for (i, e) in u.endpoints.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr class=\"endpoint\" data-upstream=\"{}\" data-url=\"{}\" data-state=\"{}\"><td class=\"muted\">endpoint {}</td><td><code>{}</code></td><td class=\"{}\">{}</td><td colspan=\"7\"></td></tr>",
                    esc(&u.name),
                    esc(&e.url),
                    e.state,
                    i + 1,
                    esc(&e.url),
                    e.state,
                    e.state,
                );
            }
        }
    }
    h.push_str("</table>");
    // Repositories.
    h.push_str("<h2>Top repositories by bytes served</h2>");
    if r.top_repositories.is_empty() {
        h.push_str("<p>None yet.</p>");
    } else {
        h.push_str(
            "<table id=\"top-repos\"><tr><th>repository</th><th class=\"n\">served</th></tr>",
        );
        for t in &r.top_repositories {
            let _ = write!(
                h,
                "<tr class=\"repo\" data-repo=\"{}\" data-bytes=\"{}\"><td>{}</td><td class=\"n\">{}</td></tr>",
                esc(&t.repository),
                t.bytes,
                esc(&t.repository),
                human_bytes(t.bytes)
            );
        }
        h.push_str("</table>");
    }
    // TLS.
    if let Some(t) = &r.tls {
        let _ = write!(
            h,
            "<h2>TLS</h2><p id=\"tls\" data-days-left=\"{}\">The served certificate is valid for {} more days.</p>",
            t.days_left, t.days_left
        );
    }
    // Policy denials.
    h.push_str("<h2>Recent policy denials</h2>");
    if r.recent_denials.is_empty() {
        h.push_str("<p>None.</p>");
    } else {
        h.push_str("<table id=\"denials\"><tr><th>when</th><th>image</th><th>block</th><th>check</th><th>client</th><th>why</th></tr>");
        for d in &r.recent_denials {
            let image = match &d.reference {
                Some(r) if r.starts_with("sha256:") => {
                    format!("{}/{}@{r}", d.upstream, d.repository)
                }
                Some(r) => format!("{}/{}:{r}", d.upstream, d.repository),
                None => format!("{}/{}", d.upstream, d.repository),
            };
            let why: String = d.message.chars().take(300).collect();
            let _ = write!(
                h,
                "<tr class=\"denial\" data-check=\"{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.check),
                ago(r.now, d.at),
                esc(&image),
                esc(&d.block),
                esc(&d.check),
                esc(&d.client),
                esc(&why)
            );
        }
        h.push_str("</table>");
    }
    // Errors.
    h.push_str("<h2>Recent errors</h2>");
    if r.recent_errors.is_empty() {
        h.push_str("<p>None.</p>");
    } else {
        h.push_str("<table id=\"errors\"><tr><th>when</th><th>status</th><th>request</th><th>client</th></tr>");
        for e in &r.recent_errors {
            let _ = write!(
                h,
                "<tr class=\"error\" data-status=\"{}\"><td>{}</td><td>{}</td><td><code>{} {}</code></td><td>{}</td></tr>",
                e.status,
                ago(r.now, e.at),
                e.status,
                esc(&e.method),
                esc(&e.path),
                esc(&e.client)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_units() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_duration(90061), "1d 1h 1m");
    }
}
