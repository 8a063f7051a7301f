"""What judging a pixel fetch costs, and how well each public bot list covers the fetch corpus
(tests/data/fetches.csv). Not a timed test: run it by hand (see bench/README.md).

    .venv/bin/python bench/classifier.py [--rounds 5]

It prints, side by side in one run:
- each candidate list's coverage of the corpus: machine rows it names (of all rows that are not
  a reader), reader rows it wrongly names, and its cost per call;
- classify()'s cost per fetch for a user agent seen for the first time (the lists' full sweep)
  and for one already seen (the bounded cache), next to ua-parser's parse of the same agents;
- the memory the lists take once loaded.
"""

import argparse
import csv
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "tests" / "data" / "fetches.csv"


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_call(function, agents, rounds):
    """The median over rounds of the mean time per call, in microseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for agent in agents:
            function(agent)
        times.append((time.perf_counter() - start) / len(agents) * 1e6)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds

    rows = list(csv.DictReader(CORPUS.open(encoding="utf-8")))
    # Readers' own programs: a provider's proxy is recognised before any list is asked.
    readers = sorted(
        {
            r["user_agent"]
            for r in rows
            if r["kind"] == "open" and r["source"] in ("direct", "outlook")
        }
    )
    machines = sorted(
        {r["user_agent"] for r in rows if r["kind"] in ("bot", "prefetch", "unknown")}
        - set(readers)
        - {""}
    )
    agents = sorted(set(readers) | set(machines))
    print(f"corpus: {len(rows)} rows, {len(readers)} reader and {len(machines)} machine agents")

    before = rss_mib()
    import crawleruseragents
    from device_detector import DeviceDetector
    from ua_parser import Parser, load_builtins

    from web.judgement import useragents
    from web.judgement.classify import Fetch, classify
    from web.judgement.ranges import Networks

    started = time.perf_counter()
    useragents.warm_up()
    print(f"loading the lists: {time.perf_counter() - started:.2f} s, {rss_mib() - before:.0f} MiB")

    networks = Networks.default()

    def judge(agent):
        return classify(Fetch(agent, "81.2.69.0"), networks)

    useragents.identify.cache_clear()
    cold = per_call(judge, agents, 1)
    warm = per_call(judge, agents, rounds)

    def device_detector(agent):
        parsed = DeviceDetector(agent, skip_device_detection=True).parse().all_details
        client = parsed.get("client") or {}
        kind = str(getattr(client.get("type"), "value", ""))
        return bool(parsed.get("bot")) or kind in useragents.MACHINE_CLIENT_TYPES

    candidates = {
        "device-detector (bots, libraries)": device_detector,
        "crawler-user-agents": crawleruseragents.is_crawler,
    }
    ua_parser = Parser.from_matchers(load_builtins())
    parse = per_call(lambda agent: ua_parser.parse(agent), agents, rounds)
    candidates["ua-parser Spider family"] = lambda agent: (
        ua_parser.parse(agent).device is not None
        and ua_parser.parse(agent).device.family == "Spider"
    )
    try:
        from crawlerdetect import CrawlerDetect

        detector = CrawlerDetect()
        candidates["crawlerdetect"] = detector.isCrawler
    except ImportError:
        print("(crawlerdetect not installed: pip install crawlerdetect to compare it too)")

    print()
    print(f"{'list':36} {'machines named':>15} {'readers named':>14} {'µs/call':>9}")
    for name, names in candidates.items():
        caught = sum(bool(names(agent)) for agent in machines)
        wrong = sum(bool(names(agent)) for agent in readers)
        cost = per_call(names, agents, rounds)
        print(
            f"{name:36} {caught:>4}/{len(machines):<4} {caught / len(machines):>5.0%}"
            f" {wrong:>4}/{len(readers):<4} {cost:>9.1f}"
        )

    print()
    print(f"classify(), a user agent seen first:   {cold:10.1f} µs per fetch")
    print(f"classify(), a user agent seen before:  {warm:10.1f} µs per fetch ({cold / warm:.0f}x)")
    print(f"ua-parser parse (its own cache):       {parse:10.1f} µs per fetch")
    print(f"memory of the process after the run:   {rss_mib():10.0f} MiB")


if __name__ == "__main__":
    main()
