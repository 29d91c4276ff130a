#!/usr/bin/python3
"""Loads the edge's /status in headless Chromium (Debian's chromium + chromium-driver,
driven by python3-selenium) and checks what the page shows against /status.json and
/metrics; saves a full-page screenshot. Run by tests/status_page.rs.

usage: status_page.py EDGE_URL SCREENSHOT_PATH EXPECTED_FILL_DIGEST
Exit 0 when every check passed; otherwise prints what differed and exits 1.
"""
import json
import sys
import tempfile
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metric_sum(text, name, labels=""):
    """Sum of every series of `name` whose label set contains `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base = series.split("{")[0]
        if base == name and labels in series:
            total += float(value)
    return total


def main():
    base, shot, fill_digest = sys.argv[1], sys.argv[2], sys.argv[3]
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}: page shows {got!r}, expected {want!r}")

    profile = tempfile.mkdtemp(prefix="sparkcr-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,2200",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(base + "/status")
        status = json.loads(fetch(base + "/status.json"))
        metrics = fetch(base + "/metrics")

        check("title", driver.title, "sparkcr-edge status")
        val = lambda el_id: driver.find_element(By.ID, el_id).get_attribute("data-value")
        check("version", driver.find_element(By.ID, "version").text, status["version"])
        check("store used", int(val("store-used")), status["store"]["used_bytes"])
        check("store used vs metrics", int(val("store-used")),
              int(metric_sum(metrics, "sparkcr_edge_store_bytes")))
        check("store budget", int(val("store-budget")), status["store"]["budget_bytes"])
        check("store budget vs metrics", int(val("store-budget")),
              int(metric_sum(metrics, "sparkcr_edge_store_budget_bytes")))
        check("WAN saved", int(val("wan-saved")), status["wan_bytes_saved"])
        check("WAN saved vs metrics", int(val("wan-saved")),
              int(metric_sum(metrics, "sparkcr_edge_served_bytes_total", 'source="cache"')))
        hits = metric_sum(metrics, "sparkcr_edge_cache_hits_total")
        misses = metric_sum(metrics, "sparkcr_edge_cache_misses_total")
        check("hit ratio (hour) vs metrics", round(float(val("hit-ratio-hour")), 4),
              round(hits / (hits + misses), 4))
        row = driver.find_element(By.ID, "traffic-hour")
        check("hits (hour)", int(row.get_attribute("data-hits")), status["last_hour"]["hits"])
        check("hits (hour) vs metrics", int(row.get_attribute("data-hits")), int(hits))
        check("served from upstream (hour) vs metrics",
              int(row.get_attribute("data-served-upstream")),
              int(metric_sum(metrics, "sparkcr_edge_served_bytes_total", 'source="upstream"')))
        check("received from upstreams (hour) vs metrics",
              int(row.get_attribute("data-upstream")),
              int(metric_sum(metrics, "sparkcr_edge_upstream_bytes_total")))

        fills = driver.find_elements(By.CSS_SELECTOR, "#fills tr.fill")
        check("fills shown", len(fills), len(status["fills"]))
        check("fills vs metrics", len(fills),
              int(metric_sum(metrics, "sparkcr_edge_fills_in_flight")))
        if fills:
            f = fills[0]
            check("fill digest", f.get_attribute("data-digest"), fill_digest)
            check("fill received", int(f.get_attribute("data-received")),
                  status["fills"][0]["received"])
            check("fill size", f.get_attribute("data-size"), str(status["fills"][0]["size"]))
            check("fill joined", int(f.get_attribute("data-joined")),
                  status["fills"][0]["joined"])
            check("joins vs metrics", int(f.get_attribute("data-joined")),
                  int(metric_sum(metrics, "sparkcr_edge_singleflight_joins_total")))

        ups = driver.find_elements(By.CSS_SELECTOR, "#upstreams tr.upstream")
        check("upstreams shown", [u.get_attribute("data-name") for u in ups],
              [u["name"] for u in status["upstreams"]])
        for u, j in zip(ups, status["upstreams"]):
            check(f"upstream {j['name']} state", u.get_attribute("data-state"), j["state"])
            check(f"upstream {j['name']} requests vs metrics",
                  int(u.get_attribute("data-requests")),
                  int(metric_sum(metrics, "sparkcr_edge_upstream_requests_total",
                                 f'upstream="{j["name"]}"')))
            # The test runs within the edge's first minute: the window starts at the start,
            # so the bytes received in it are all the upstream sent.
            received = u.find_elements(By.CSS_SELECTOR, ".received")
            if j["received_bytes_per_second"] is not None:
                check(f"upstream {j['name']} received shown", len(received), 1)
                check(f"upstream {j['name']} received", int(received[0].get_attribute("data-value")),
                      j["received_bytes"])
            check(f"upstream {j['name']} received vs metrics (first minute)", j["received_bytes"],
                  int(metric_sum(metrics, "sparkcr_edge_upstream_bytes_total", f'upstream="{j["name"]}"')))

        repos = driver.find_elements(By.CSS_SELECTOR, "#top-repos tr.repo")
        check("top repositories",
              [(r.get_attribute("data-repo"), int(r.get_attribute("data-bytes"))) for r in repos],
              [(t["repository"], t["bytes"]) for t in status["top_repositories"]])
        errors = driver.find_elements(By.CSS_SELECTOR, "#errors tr.error")
        check("recent errors", [int(e.get_attribute("data-status")) for e in errors],
              [e["status"] for e in status["recent_errors"]])

        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-hour g")
        check("chart bars (hour)", len(bars), len(status["chart_hour"]))
        drawn = sum(int(b.get_attribute("data-cache")) for b in bars)
        check("chart bytes from cache (hour)", drawn,
              sum(p["served_cache_bytes"] for p in status["chart_hour"]))
        check("chart covers the hour's bytes from cache", drawn,
              status["last_hour"]["served_cache_bytes"])
        # WAN saved: the table and the 30-day chart against /status.json and /metrics (a
        # new store: what it kept is what this process counted).
        saved = driver.find_element(By.CSS_SELECTOR, '#savings tr[data-upstream="all"]')
        check("WAN saved today", int(saved.get_attribute("data-today")), status["savings"]["today"]["bytes"])
        check("WAN saved in all", int(saved.get_attribute("data-total")), status["savings"]["total"]["bytes"])
        check("WAN saved in all vs /metrics", status["savings"]["total"]["bytes"],
              int(metric_sum(metrics, "sparkcr_edge_saved_bytes_total")))
        check("WAN saved is not nothing", status["savings"]["total"]["bytes"] > 0, True)
        days = driver.find_elements(By.CSS_SELECTOR, "#chart-saved g")
        check("days charted", len(days), 30)
        check("chart bytes saved", sum(int(d.get_attribute("data-cache")) for d in days),
              status["savings"]["total"]["bytes"])
        # Nothing loaded from anywhere else: the box may be offline.
        external = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        check("resources loaded besides the page", external, [])
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(900, min(int(height) + 40, 6000)))
        driver.save_screenshot(shot)
    finally:
        driver.quit()
    if failures:
        print("\n".join(failures))
        return 1
    print("status page checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
