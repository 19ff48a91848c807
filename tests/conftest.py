import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/orthanc.py

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Tests mirror the modules: tests/transforms/, tests/schemas/, tests/pipelines/ hold unit and component tests;
# tests/e2e/ whole pipeline runs, tests/services/ runs against real services (Orthanc, a GCS emulator).
# Select with `-m e2e`, `-m service`, or `-m "not e2e and not service"` for the fast ones.
FOLDER_MARKS = {"e2e": "e2e", "services": "service"}


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: whole pipeline runs end to end (tests/e2e/)")
    config.addinivalue_line("markers", "service: runs against a real service started by the test (tests/services/)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = os.path.basename(os.path.dirname(str(item.fspath)))
        if folder in FOLDER_MARKS:
            item.add_marker(getattr(pytest.mark, FOLDER_MARKS[folder]))


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
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_corpus()),
        model_writer=buf,
        vocab_size=200,
        model_type="unigram",
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()
