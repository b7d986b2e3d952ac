"""Long-running reliability tests, run on demand (issue 14).

Not part of the CI suite (``tools/run-tests.sh``): each takes from several
minutes to much longer, and what they measure (leaks over many cycles,
riding through infrastructure faults) is what a quiet host should be
given to judge. The defects they found have regression tests in the
ordinary unit and functional suites. Run them with::

    tools/run-stress.sh [TEST-FILTER]

(``tools/soak.py`` and ``tools/fault-matrix-zun.py`` are the full
forms.)
"""
