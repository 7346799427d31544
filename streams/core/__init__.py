"""The pure core of the fold: no I/O, no clock, no randomness.

``state`` (RoleState, FoldConfig), ``window`` (dedupe window), ``rules``
(lifecycle and refusals), ``mutate`` (one mutator per payload), ``commits``
(content-addressed commits), ``outcome`` (Accepted / Rejected / Duplicate),
``fold`` (``apply_event``: one event), ``log`` (``Folder``: events one after
another, and ``fold_log``: whole partitions, the one whole-log fold that the
workers' semantics and replay share), ``serde`` (changelog and commit record
forms).
"""
