"""Benchmark harness: FlashDecoder variants beside the decoders Wan users have, measured side by side.

Each case (one decoder x resolution x length) runs in a fresh `python -m flashdecode.bench --case JSON`
process, so imports, the allocator and CUDA's caching pool never carry over from one case to the next.
Inside a case: load the decoder, warm up on a short clip, then time `--repeat` decodes of the whole clip
and keep the medians (measure.py). End to end (`output="mp4"` or `"raw"`): after each decode-only run, the
same clip goes through the library's whole path, `flashdecode.decode_file` with the same warm decoder.

  cases.py    what to measure (Case, the CLI's lists -> cases)
  measure.py  inside a case process: load, warm up, time, peak memory -> one row
  run.py      the parent: one process per case, rows kept (and written) as they come
  report.py   ratios between rows, the machine, the JSON, the table and the chart
"""
from .cases import (BASELINES, COMPILE_MODES, DTYPE_NAMES, FAMILY_BASELINES, OUTPUTS, RESOLUTIONS, Case, build_cases,
                    check_baseline_dependency, failed_row, parse_choices, parse_dtypes, parse_int_list, parse_list,
                    parse_resolution)
from .measure import EndToEnd, run_case, write_latents, write_random_latents
from .report import (add_ratios, check_plot_dependency, display_name, machine_info, plot, render_table, series,
                     write_json)
from .run import Bench, run_case_process, too_long

__all__ = ["BASELINES", "COMPILE_MODES", "DTYPE_NAMES", "FAMILY_BASELINES", "OUTPUTS", "RESOLUTIONS", "Case",
           "build_cases", "check_baseline_dependency", "failed_row", "parse_choices", "parse_dtypes",
           "parse_int_list", "parse_list", "parse_resolution", "EndToEnd", "run_case", "write_latents",
           "write_random_latents", "add_ratios", "check_plot_dependency", "display_name", "machine_info", "plot",
           "render_table", "series", "write_json", "Bench", "run_case_process", "too_long"]
