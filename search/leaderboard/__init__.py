"""The leaderboard: every architecture the searches found, in one file, with what it costs at size.

Storage is one JSON Lines file (`DEFAULT_PATH`, relative to the working directory), one record per
line, of two kinds:

  architecture  a pattern a search produced (its aggregate, its best single candidate, or one of
                its top candidates), its proxy scores per task and seed, its proxy size, and its
                extrapolations to 350M, 1B and 3B with the 1B training FLOPs and inference state
  search        one search: strategy, evaluator, storage, evaluation counts, best-so-far curve

A record is updated by appending a new version of it: a later line with the same key replaces the
earlier one (architecture: search, role, pattern; search: search). Each append is one `write()` of
one line to a file opened with O_APPEND, so concurrent writers never interleave or lose lines.

The builders (`architecture_record`, `search_record`) take what a search knows and compute every
derived column, so the writer and the readers never disagree on a formula. `rows` flattens the
current architecture records into the table that `composer-leaderboard` prints (text, csv, json,
markdown) and that html.py renders as HTML. Imports no torch.

  records.py   what a record holds: the builders and their checks
  store.py     the JSON Lines file: append, read, the current version of each record
  formats.py   the table: rows, columns, text, csv, markdown and JSON
  html.py      the HTML report

Long-context probe: an architecture record may carry `needle@<m>x` fields (composer/evals/needle.py's
exact-match retrieval accuracy at m × the training context, a fraction); the table then gets one
column per multiple seen, in order of m, e.g. `needle@1x`, `needle@2x`.
"""
