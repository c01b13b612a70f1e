"""The leaderboard: every architecture the searches found, in one file, with what it costs at size.

Storage is one JSON Lines file (`DEFAULT_PATH`, relative to the working directory), one record per
line, of five kinds:

  architecture  a pattern a search evaluated, by its role: "aggregate" (the aggregated architecture),
                "best_single", "candidate" (one of its top candidates) or "baseline" (a reference
                pattern evaluated beside the candidates, by default the Llama layout '*-' repeated to
                the search's length; no aggregator); its proxy scores per task and seed, its proxy
                size, and its extrapolations to 350M, 1B and 3B with the 1B training FLOPs and
                inference state. Baselines are ranked with the others and marked in every format; the
                report draws them apart and never puts them on the Pareto front
  search        one search: strategy, evaluator, storage, evaluation counts, best-so-far curve
  pretrain      one full pretraining run (`composer-pretrain`): quality, throughput, the probe
  fidelity      one rank-fidelity study (`composer-fidelity`'s fidelity.json): the proxy and the larger
                rungs it is checked against, each pattern's proxy score and bits per byte per rung and
                seed, the rank correlations with their intervals, the noise floor per rung
  bench         one `composer-bench` run: a pattern at a size and the Llama layout of that size, measured
                on one named device (training, prefill and decode tokens/s, memory, the ratios); an
                architecture row whose pattern (as searched or grown to the bench's size) was measured
                gets the measured columns beside the analytic ones

A record is updated by appending a new version of it: a later line with the same key replaces the
earlier one (architecture: search, role, pattern; search: search; pretrain and fidelity: run_dir; bench:
pattern, size, device).
Each append is one `write()` of one line to a file opened with O_APPEND, so concurrent writers never
interleave or lose lines.

The builders (`architecture_record`, `search_record`, `pretrain_record`, `fidelity_record`, `bench_record`) check
what a tool knows and compute every derived column, so the writer and the readers never disagree on
a formula. `rows` flattens the current architecture records into the table that
`composer-leaderboard` prints (text, csv, json, markdown) and that html.py renders as HTML; the text
format then summarises the pretraining runs, the fidelity studies and the bench runs (`full_runs_text`,
`fidelity_text`, `bench_text`), and the report gives the studies a "Rank fidelity" section and can plot
quality against measured decode throughput (`--pareto-x decode`). Imports no torch.

  records.py   what a record holds: the builders and their checks
  store.py     the JSON Lines file: append, read, the current version of each record
  formats.py   the table: rows, columns, text, csv, markdown and JSON
  html.py      the HTML report

Long-context probe: an architecture record may carry `needle@<m>x` fields (composer/evals/needle.py's
exact-match retrieval accuracy at m × the training context, a fraction); the table then gets one
column per multiple seen, in order of m, e.g. `needle@1x`, `needle@2x`.
"""
