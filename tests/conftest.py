import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/orthanc.py

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def demo_model_bytes():
    from medprep.samples.tokenizer import train_demo_tokenizer

    return train_demo_tokenizer()


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory, demo_model_bytes):
    path = tmp_path_factory.mktemp("tok") / "demo.model"
    path.write_bytes(demo_model_bytes)
    return str(path)


@pytest.fixture(scope="session")
def plain_model_bytes():
    """A SentencePiece model WITHOUT Gemma 3 special pieces."""
    import io

    import sentencepiece as spm

    from medprep.samples.tokenizer import sample_corpus

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sample_corpus()), model_writer=buf, vocab_size=200,
                                   model_type="unigram", num_threads=1, minloglevel=2)
    return buf.getvalue()
