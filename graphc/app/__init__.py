"""The application layer: ``graphc.compile`` (:mod:`compiler`), the command line (:mod:`cli`), ``graphc
compare`` (:mod:`compare`), ``graphc demo`` (:mod:`demo`), ``graphc run`` (:mod:`run`), and the tables
they print (:mod:`report`). The only part of graphc that imports ``placement`` and ``runtime``."""
