"""asr: a BiLSTM-CTC speech recognition toolkit for the command line."""

__version__ = "0.1.0"
