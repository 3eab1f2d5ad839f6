"""`vecq embed`: a corpus file in, a vector file out -- through a Redis and its workers, or
embedded (a private server and an in-process worker).  `run.py` drives a run, `files.py` reads
corpora and writes vector files through a resumable work area, `server.py` is the embedded server.
"""

from .run import EmbedReport, EmbedSettings, embed_file

__all__ = ["EmbedReport", "EmbedSettings", "embed_file"]
