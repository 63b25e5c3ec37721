"""``hilbed``: the command line (entry point ``hilbed.orchestrator.cli.main:main``).

One module per group of sub-commands: :mod:`.main` (run, validate, plan,
resume and the parser, which imports the others statically), :mod:`.trace`,
:mod:`.lab` (provision, check), :mod:`.codecs` (fit, eval-codecs),
:mod:`.analysis` (report, compare, schedule).
"""
