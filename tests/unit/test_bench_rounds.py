"""bench/run.py `--rounds`: several rounds of a scenario reported as each figure's median round."""

from __future__ import annotations

from harness import load_bench_run


def test_each_figure_is_its_median_round_with_every_round_kept() -> None:
    run = load_bench_run()

    def round_of(sends: float, raw: float, cpu: float, broker: str = "default") -> list[object]:
        return [run.Row("send path (sends/s)", sends, "sends/s", raw, "raw", broker=broker),
                run.Row("CPU per send (ms)", cpu, "ms", None, "", broker=broker)]

    rounds = [round_of(1500, 3000, 0.50), round_of(1200, 3000, 0.40), round_of(1800, 2000, 0.60),
              round_of(1000, 1000, 0.45)]
    rows = run.median_rounds(rounds)
    assert [row.name for row in rows] == ["send path (sends/s)", "CPU per send (ms)"]
    sends, cpu = rows
    # by ratio, not by value: 0.4, 0.5, 0.9, 1.0 -> the lower median is the 1,500 / 3,000 round
    assert (sends.value, sends.baseline, sends.ratio) == (1500, 3000, 0.5)
    assert sends.rounds == [0.4, 0.5, 0.9, 1.0]
    assert (cpu.value, cpu.rounds) == (0.45, [0.40, 0.45, 0.50, 0.60])  # no baseline: by value


def test_brokers_are_kept_apart() -> None:
    run = load_bench_run()
    rounds = [[run.Row("x", 1, "", 2, "raw", broker="default"), run.Row("x", 3, "", 2, "raw", broker="nodelay")],
              [run.Row("x", 2, "", 2, "raw", broker="default"), run.Row("x", 4, "", 2, "raw", broker="nodelay")]]
    rows = run.median_rounds(rounds)
    assert [(row.broker, row.value, row.rounds) for row in rows] == [("default", 1, [0.5, 1.0]),
                                                                      ("nodelay", 3, [1.5, 2.0])]
