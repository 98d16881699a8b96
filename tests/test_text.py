"""lstmkit.data.text: corpus reading, vocabularies, batchify / BPTT windows, the embedded corpus."""

from pathlib import Path

import pytest
import torch

from lstmkit.data.text import (
    EOS,
    UNK,
    Vocab,
    batchify,
    bptt_windows,
    load_corpus,
    num_random_batches,
    num_windows,
    random_windows,
    stdlib_corpus,
    stdlib_corpus_files,
    tokenize,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_batchify_columns_are_contiguous_quarters():
    ids = torch.arange(26)  # a..z
    b = batchify(ids, 4)
    assert b.shape == (6, 4)
    assert b[:, 0].tolist() == [0, 1, 2, 3, 4, 5]  # a..f
    assert b[:, 1].tolist() == [6, 7, 8, 9, 10, 11]  # g..l
    assert b[0].tolist() == [0, 6, 12, 18]  # a g m s; y, z dropped
    with pytest.raises(ValueError, match="cannot fill"):
        batchify(torch.arange(5), 4)


def test_bptt_windows_targets_are_next_tokens_and_cover_the_stream():
    b = batchify(torch.arange(26), 4)  # (6, 4)
    wins = list(bptt_windows(b, 2))
    assert len(wins) == num_windows(b, 2) == 3
    assert [x.shape[0] for x, _ in wins] == [2, 2, 1]  # the last window is shorter
    for x, y in wins:
        assert torch.equal(y, x + 1)  # within a column the next token is +1
    assert torch.cat([x for x, _ in wins])[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(list(bptt_windows(b, 2, start=1))[0][0], wins[1][0])


def test_random_windows_deterministic_shifted_and_counted():
    ids = torch.arange(1000)
    a = list(random_windows(ids, 4, 7, torch.Generator().manual_seed(3)))
    b = list(random_windows(ids, 4, 7, torch.Generator().manual_seed(3)))
    assert len(a) == num_random_batches(ids, 4, 7)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    for x, y in a:
        assert x.shape == (7, 4) and torch.equal(y, x + 1)
    starts = torch.cat([x[0] for x, _ in a])
    assert len(set(starts.tolist())) == len(starts)  # no window twice
    assert torch.equal(list(random_windows(ids, 4, 7, torch.Generator().manual_seed(3), start=2))[0][0], a[2][0])


def test_tokenize_and_vocab():
    assert tokenize("a b\n\nc\n", "word") == ["a", "b", EOS, "c", EOS]
    assert tokenize("ab\n", "char") == ["a", "b", "\n"]
    with pytest.raises(ValueError, match="level"):
        tokenize("x", "byte")
    v = Vocab.build(tokenize("a a a b b c\n", "word"), "word", max_size=3)
    assert v.itos == ["a", "b", UNK]  # most frequent first, <unk> takes the rest
    assert v.encode(["c", "a"]).tolist() == [2, 0]
    cv = Vocab.build(list("hello"), "char")
    assert cv.itos == ["e", "h", "l", "o"] and cv.decode(cv.encode(list("hole"))) == "hole"
    with pytest.raises(ValueError, match=r"1 character\(s\) not in the vocabulary \('z'\)"):
        cv.encode(list("hz"))
    assert Vocab.from_dict(v.to_dict()).itos == v.itos


def test_load_corpus_file_folder_and_splits(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("x" * 80 + "y" * 10 + "z" * 10)
    c = load_corpus(f, valid_fraction=0.1, test_fraction=0.1)
    assert c.splits["train"] == "x" * 80 and c.splits["valid"] == "y" * 10 and c["test"] == "z" * 10
    split_dir = tmp_path / "ptbish"
    split_dir.mkdir()
    for s in ("train", "valid", "test"):
        (split_dir / f"ptb.{s}.txt").write_text(f"{s} words\n")
    c = load_corpus(split_dir)
    assert c["valid"] == "valid words\n" and c["train"] == "train words\n"
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "b.txt").write_text("bbbbbbbbbb")
    (plain / "sub" / "a.py").write_text("aaaaaaaaaa")
    c = load_corpus(plain, valid_fraction=0.5)
    assert c["train"] == "bbbbbbbbbb" and c["valid"] == "aaaaaaaaaa"  # sorted by path: b.txt < sub/a.py
    with pytest.raises(ValueError, match="no 'test' split"):
        c["test"]


def test_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok text \xff\xfe more")
    with pytest.raises(ValueError, match=r"byte 8 \(0xff\) is not valid utf-8"):
        load_corpus(tmp_path / "bad.txt")
    assert load_corpus(tmp_path / "bad.txt", encoding="latin-1")["train"].startswith("ok text")


def test_stdlib_corpus_is_deterministic_python_source():
    files = stdlib_corpus_files()
    assert files == sorted(files) and all(p.suffix == ".py" and not p.name.startswith("_") for p in files)
    size = sum(p.stat().st_size for p in files)
    assert 1_500_000 <= size < 1_500_000 + max(p.stat().st_size for p in files)
    text = stdlib_corpus()
    assert "def " in text and "import " in text and text == stdlib_corpus()


def test_ptb_counts():
    if not (DATA / "ptb").is_dir():
        pytest.skip("../shared/data/ptb not present")
    c = load_corpus(DATA / "ptb")
    train = tokenize(c["train"], "word")
    assert train.count(EOS) == 42_068 and len(train) - 42_068 == 887_521
    assert len(set(train)) == 10_000
