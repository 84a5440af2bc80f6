"""The search spaces that ship with cxr-tune, e.g. `transfer` (the design card's sweep), `seed`
(the seed study's own runs) and `smoke` (tiny, for tests and CPU checks).

Each file is a plain define-by-run module (`search.space` loads it by path); installed, this
folder is `cxr_tune/spaces/`, and `cxr-tune sweep --space NAME` finds a file here by its name
(`cxr-tune spaces` lists them).
"""
