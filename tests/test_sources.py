"""Dataset sources: each reader on small files in the dataset's published format, written here."""

import csv
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from debias import storage
from debias.config import ConfigError, load_config
from debias.curation.curate import PreprocessConfig
from debias.curation.sources import InputConfig, ids_in_several_windows, read_source


def _by_id(rows):
    return {r["video_id"]: r for r in rows}


def test_kinetics_csv_rows_windows_files_and_malformed_lines(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "trimmedAAAA_000010_000020.mp4").write_bytes(b"x")  # a downloader's trimmed clip
    (videos / "wholeBBBBBB.mp4").write_bytes(b"x")  # a whole video: the decode cuts the window
    csv_dir = tmp_path / "kinetics400"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,trimmedAAAA,10,20,train,0\n"
        "\"arm wrestling\",wholeBBBBBB,30,40,train,1\n"
        "abseiling,notYetThere,0,10,train,0\n"
        "abseiling,badTimes,ten,20,train,0\n"
        "abseiling,,0,10,train,0\n"
        "abseiling,backwards,20,10,train,0\n"
        ",noLabel0000,0,10,train,0\n")
    (csv_dir / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                          "zumba,trimmedAAAA,10,20,val\n"  # the same id and window again
                                          "yoga,wholeBBBBBB,50,60,val\n")  # the same id, another window
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(csv_dir), root=str(videos)))
    by_id = _by_id(rows)
    assert classes == ["abseiling", "arm wrestling", "yoga", "zumba"]  # every label the CSVs name, sorted
    a = by_id["trimmedAAAA_000010_000020"]
    assert a["source_path"].endswith("trimmedAAAA_000010_000020.mp4") and (a["time_start"], a["time_end"]) == (0, 10)
    b = by_id["wholeBBBBBB_000030_000040"]
    assert b["source_path"].endswith("wholeBBBBBB.mp4") and (b["time_start"], b["time_end"]) == (30, 40)
    assert b["label_id"] == 1 and b["youtube_id"] == "wholeBBBBBB" and b["error"] == ""
    b2 = by_id["wholeBBBBBB_000050_000060"]  # a second window of one video is a second clip, not a duplicate
    assert b2["source_path"] == b["source_path"] and (b2["time_start"], b2["time_end"]) == (50, 60)
    assert b2["label"] == "yoga" and b2["error"] == "" and b2["split"] == "val"
    assert ids_in_several_windows(rows) == {"wholeBBBBBB": ["wholeBBBBBB_000030_000040", "wholeBBBBBB_000050_000060"]}
    assert by_id["notYetThere_000000_000010"]["error"] == ""  # not downloaded yet: the decode (or download) stage decides
    bad = [r for r in rows if r["error_code"] == "malformed_manifest_row"]
    assert len(bad) == 4 and all(r["error_stage"] == "source" and "train.csv:" in r["error"] for r in bad)
    assert all(r["video_id"] == r["error"].split(": ")[0] for r in bad)  # a malformed row is named by file:line
    assert any("bad time window" in r["error"] for r in bad) and any("no youtube_id" in r["error"] for r in bad)
    assert any("time_end 10.0 <= time_start 20.0" in r["error"] for r in bad)
    assert any("train.csv:8: no label" in r["error"] for r in bad)
    dup = by_id["trimmedAAAA_000010_000020#2"]  # its own id, so that the summary counts it
    assert dup["error_code"] == "duplicate_id" and dup["label"] == "zumba" and "validate.csv:2" in dup["error"]
    assert "first at " in dup["error"] and "train.csv:2" in dup["error"]
    assert len(rows) == len(by_id) == 9  # every line is a row, good or not, each its own id


def test_kinetics_test_csv_without_labels_is_read_unlabelled(tmp_path):
    """The 2017 test list has no label column: its rows are curated with label "" and label_id -1."""
    (tmp_path / "kinetics_test.csv").write_text("youtube_id,time_start,time_end,split\n"
                                                "--6bJUbfpnQ,17,27,test\n"
                                                "--6bJUbfpnQ,40,50,test\n")
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "kinetics_test.csv")))
    assert classes == []
    assert [(r["video_id"], r["label"], r["label_id"], r["error"]) for r in rows] == [
        ("--6bJUbfpnQ_000017_000027", "", -1, ""), ("--6bJUbfpnQ_000040_000050", "", -1, "")]


def test_kinetics600_id_in_two_windows_with_two_labels_is_two_clips(tmp_path):
    """Kinetics-600 validation has xnC3nngvLCo as "cracking knuckles" at 7-17 s and "cracking neck" at 83-93 s."""
    (tmp_path / "kinetics600_val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                  "cracking knuckles,xnC3nngvLCo,7,17,validate\n"
                                                  "cracking neck,xnC3nngvLCo,83,93,validate\n")
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "kinetics600_val.csv")))
    assert classes == ["cracking knuckles", "cracking neck"]
    assert [(r["video_id"], r["label_id"], r["error"]) for r in rows] == [
        ("xnC3nngvLCo_000007_000017", 0, ""), ("xnC3nngvLCo_000083_000093", 1, "")]


def test_kinetics_csv_without_required_columns_fails_before_work(tmp_path):
    (tmp_path / "k.csv").write_text("youtube_id,time_start\nabc,0\n")
    with pytest.raises(ValueError, match=r"k.csv: not a Kinetics CSV, lacks columns \['split'\]"):
        read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "k.csv")))
    with pytest.raises(FileNotFoundError, match="input.manifest"):
        read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "missing.csv")))


def test_minikinetics_joins_id_lists_with_the_csv_and_reports_missing_and_ambiguous_ids(tmp_path):
    (tmp_path / "kinetics_train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                 "abseiling,aaaaaaaaaaa,1,11,train\n"
                                                 "zumba,bbbbbbbbbbb,2,12,train\n"
                                                 "yoga,ccccccccccc,3,13,val\n"
                                                 "unused,ddddddddddd,0,10,train\n"
                                                 "abseiling,eeeeeeeeeee,0,10,train\n"
                                                 "zumba,eeeeeeeeeee,20,30,train\n")
    (tmp_path / "train_ytid_list.txt").write_text("aaaaaaaaaaa\nbbbbbbbbbbb\nmissing0000\neeeeeeeeeee\n")
    (tmp_path / "val_ytid_list.txt").write_text("ccccccccccc\n")
    cfg = InputConfig(source="minikinetics", manifest=str(tmp_path / "kinetics_train.csv"),
                      id_lists=[str(tmp_path / "train_ytid_list.txt"), str(tmp_path / "val_ytid_list.txt")])
    rows, classes = read_source(cfg)
    by_id = _by_id(rows)
    assert set(by_id) == {"aaaaaaaaaaa_000001_000011", "bbbbbbbbbbb_000002_000012", "missing0000",
                          "ccccccccccc_000003_000013", "eeeeeeeeeee_000000_000010", "eeeeeeeeeee_000020_000030"}
    assert classes == ["abseiling", "yoga", "zumba"]  # ddd... is not in Mini-Kinetics, nor its class
    assert by_id["ccccccccccc_000003_000013"]["split"] == "val" and by_id["ccccccccccc_000003_000013"]["time_start"] == 3
    missing = by_id["missing0000"]
    assert missing["error_code"] == "not_in_manifest" and "train_ytid_list.txt:3" in missing["error"]
    # One listed id, two windows in the CSV: both kept as clips, and reported (the list cannot say which).
    assert ids_in_several_windows(rows) == {"eeeeeeeeeee": ["eeeeeeeeeee_000000_000010", "eeeeeeeeeee_000020_000030"]}
    assert str(cfg.videos_dir()) == str(tmp_path / "videos")  # the default videos folder


def test_ucf101_official_split_lists(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n3 Shotput\n")
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                           "Basketball/v_Basketball_g08_c01.avi 2\n"
                                           "Basketball/v_Basketball_g09_c01.avi 3\n"  # index says Shotput
                                           "Dancing/v_Dancing_g01_c01.avi 2\n")  # unknown class
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nShotput/v_Shotput_g05_c02.avi\n")
    (lists / "trainlist02.txt").write_text("Shotput/v_Shotput_g01_c01.avi 3\n")
    (lists / "testlist02.txt").write_text("")
    cfg = InputConfig(source="ucf101", manifest=str(lists), root=str(tmp_path / "UCF-101"))
    rows, classes = read_source(cfg)
    assert classes == ["ApplyEyeMakeup", "Basketball", "Shotput"]  # classInd's order
    by_id = _by_id(rows)
    assert by_id["v_Shotput_g05_c02"]["split"] == "test" and by_id["v_Shotput_g05_c02"]["label_id"] == 2
    assert by_id["v_Basketball_g08_c01"]["source_path"] == str(tmp_path / "UCF-101/Basketball/v_Basketball_g08_c01.avi")
    assert "class index 3 is Shotput, folder says Basketball" in by_id["v_Basketball_g09_c01"]["error"]
    assert "class Dancing not in classInd.txt" in by_id["v_Dancing_g01_c01"]["error"]
    rows2, _ = read_source(InputConfig(source="ucf101", manifest=str(lists), root="x", split_index=2))
    assert [r["video_id"] for r in rows2] == ["v_Shotput_g01_c01"]
    with pytest.raises(FileNotFoundError, match="trainlist03.txt"):
        read_source(InputConfig(source="ucf101", manifest=str(lists), root="x", split_index=3))


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "drink_test_split1.txt").write_text("50_FIRST_DATES_drink_u_nm_np1_fr_goo_29.avi 1 \n"
                                                  "drink_left_out.avi 0 \n"
                                                  "drink_for_test.avi 2 \n")
    (splits / "ride_horse_test_split1.txt").write_text("ride_horse.avi 1\nbroken_line.avi\n")
    (splits / "drink_test_split2.txt").write_text("other_split.avi 1\n")
    rows, classes = read_source(InputConfig(source="hmdb51", manifest=str(splits), root=str(tmp_path / "hmdb51")))
    by_id = _by_id(rows)
    assert classes == ["drink", "ride_horse"]
    assert set(by_id) == {"50_FIRST_DATES_drink_u_nm_np1_fr_goo_29", "drink_for_test", "ride_horse", "broken_line"}
    assert by_id["drink_for_test"]["split"] == "test" and by_id["ride_horse"]["split"] == "train"
    assert by_id["ride_horse"]["source_path"] == str(tmp_path / "hmdb51/ride_horse/ride_horse.avi")
    assert by_id["broken_line"]["error_code"] == "malformed_manifest_row"
    assert "ride_horse_test_split1.txt:2" in by_id["broken_line"]["error"]


def test_diving48_v2_json(tmp_path):
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "NoTwis", "PIKE"], ["Forward", "35som", "NoTwis", "TUCK"]]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    entries = [{"vid_name": "_8Vy3dlHg2w_00000", "label": 0, "start_frame": 0, "end_frame": 52},
               {"vid_name": "_8Vy3dlHg2w_00001", "label": 2, "start_frame": 0, "end_frame": 60},
               {"vid_name": "no_label", "start_frame": 0, "end_frame": 10},
               {"vid_name": "bad_range", "label": 2, "start_frame": 9, "end_frame": 9},
               {"vid_name": "past_vocab", "label": 3, "start_frame": 0, "end_frame": 9}]
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(entries))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "t1", "label": 2, "start_frame": 0,
                                                                 "end_frame": 30}]))
    rows, classes = read_source(InputConfig(source="diving48", manifest=str(tmp_path), root=str(tmp_path / "rgb")))
    by_id = _by_id(rows)
    # the vocabulary's classes, all of them (class 1 has no clip here), label = label_id
    assert classes == ["Back_15som_05Twis_FREE", "Back_15som_NoTwis_PIKE", "Forward_35som_NoTwis_TUCK"]
    assert by_id["_8Vy3dlHg2w_00001"]["label"] == "Forward_35som_NoTwis_TUCK" and by_id["_8Vy3dlHg2w_00001"]["label_id"] == 2
    assert by_id["t1"]["split"] == "test" and by_id["t1"]["source_path"] == str(tmp_path / "rgb" / "t1.mp4")
    assert "KeyError" in by_id["no_label"]["error"] and "Diving48_V2_train.json[2]" in by_id["no_label"]["error"]
    assert "end_frame 9 <= start_frame 9" in by_id["bad_range"]["error"]
    assert "label 3 not in 0-2" in by_id["past_vocab"]["error"]
    (tmp_path / "Diving48_V2_test.json").write_text("[{")
    with pytest.raises(ValueError, match="Diving48_V2_test.json: not valid JSON"):
        read_source(InputConfig(source="diving48", manifest=str(tmp_path), root="x"))
    (tmp_path / "Diving48_vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"Diving48_vocab.json not found \(input.manifest\)"):
        read_source(InputConfig(source="diving48", manifest=str(tmp_path), root="x"))


def test_plain_folder_and_auto_source(tmp_path):
    for cls, names in {"jump": ["a.mp4", "b.AVI", "notes.txt"], "wave": ["c.mkv", ".hidden.mp4"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).write_bytes(b"x")
    (tmp_path / "loose.mp4").write_bytes(b"x")
    cfg = load_config(PreprocessConfig, None, [f"input.root={tmp_path}"]).input
    assert cfg.resolved_source() == "folder"  # no manifest named: a folder
    rows, classes = read_source(cfg)
    assert classes == ["jump", "wave"]
    assert sorted(r["video_id"] for r in rows if not r["error"]) == ["jump/a", "jump/b", "wave/c"]
    assert all(r["split"] == "train" for r in rows)
    loose = [r for r in rows if r["error"]]
    assert len(loose) == 1 and loose[0]["error_code"] == "no_class_folder"
    with pytest.raises(FileNotFoundError, match="input.root"):
        read_source(InputConfig(root=str(tmp_path / "nope")))
    assert InputConfig(manifest="m.csv").resolved_source() == "kinetics"


def test_bad_input_config_names_the_key():
    with pytest.raises(ConfigError, match="input.split_index: must be 1, 2 or 3"):
        load_config(PreprocessConfig, None, ["input.split_index=4"])
    with pytest.raises(ConfigError, match="input.root: source=ucf101 needs input.root"):
        load_config(PreprocessConfig, None, ["input.source=ucf101", "input.manifest=ucfTrainTestlist"])
    with pytest.raises(ConfigError, match="input.id_lists: source=minikinetics needs"):
        load_config(PreprocessConfig, None, ["input.source=minikinetics", "input.manifest=k.csv"])
    with pytest.raises(ConfigError, match="input.source: must be one of"):
        load_config(PreprocessConfig, None, ["input.source=kinetics900"])
    with pytest.raises(ConfigError, match="download.enabled: downloads YouTube ids; input.source=folder"):
        load_config(PreprocessConfig, None, ["input.root=x", "download.enabled=true"])


# --- the published annotation files (../shared/data/real_meta; the videos are not there) ----------

REAL_META = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_meta"
NO_VIDEOS = "/nonexistent/videos"  # the readers never look: a missing video is the decode stage's error row


@pytest.fixture(scope="module")
def real_meta() -> Path:
    if not (REAL_META / "SOURCES.tsv").is_file():
        pytest.skip(f"the published annotation files are not at {REAL_META} (the shared/ folder beside the repo)")
    return REAL_META


def _counts(rows):
    assert all(r["error"] == "" for r in rows), next(r["error"] for r in rows if r["error"])
    assert len({r["video_id"] for r in rows}) == len(rows)
    return Counter(r["split"] for r in rows)


@pytest.mark.parametrize("split_index,train,test", [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)])
def test_real_ucf101_split_files(real_meta, split_index, train, test):
    lists = real_meta / "ucf101" / "ucfTrainTestlist"
    rows, classes = read_source(InputConfig(source="ucf101", manifest=str(lists), root=NO_VIDEOS, split_index=split_index))
    assert _counts(rows) == {"train": train, "test": test}
    official = [line.split() for line in (lists / "classInd.txt").read_text().splitlines() if line.strip()]
    assert classes == [name for _, name in official] and len(classes) == 101  # classInd.txt's order, 1-based there
    assert classes[:3] == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"] and classes[-1] == "YoYo"
    by_id = _by_id(rows)
    r = by_id["v_ApplyEyeMakeup_g08_c01"] if split_index == 1 else rows[0]
    assert classes[r["label_id"]] == r["label"] and r["source_path"].startswith(NO_VIDEOS + "/")
    assert all(classes[r["label_id"]] == r["label"] for r in rows)


@pytest.mark.parametrize("split_index", [1, 2, 3])
def test_real_hmdb51_split_files(real_meta, split_index):
    splits = real_meta / "hmdb51" / "testTrainMulti_7030_splits"
    rows, classes = read_source(InputConfig(source="hmdb51", manifest=str(splits), root=NO_VIDEOS, split_index=split_index))
    assert _counts(rows) == {"train": 3570, "test": 1530}
    assert len(classes) == 51 and classes == sorted(classes) and {"brush_hair", "wave", "ride_horse"} <= set(classes)
    assert Counter(r["label"] for r in rows) == {c: 100 for c in classes}  # 70 train + 30 test per class
    r = _by_id(rows)["50_FIRST_DATES_drink_u_nm_np1_fr_goo_29"]
    assert r["label"] == "drink" and r["source_path"] == f"{NO_VIDEOS}/drink/50_FIRST_DATES_drink_u_nm_np1_fr_goo_29.avi"


def test_real_diving48_v2_keeps_the_48_official_classes(real_meta):
    folder = real_meta / "diving48"
    rows, classes = read_source(InputConfig(source="diving48", manifest=str(folder), root=NO_VIDEOS))
    assert _counts(rows) == {"train": 15027, "test": 1970}
    vocab = json.loads((folder / "Diving48_vocab.json").read_text())
    assert len(classes) == 48 and classes == ["_".join(v) for v in vocab]
    assert 30 not in {r["label_id"] for r in rows} and classes[30]  # V2 has no clip of class 30; its place stays
    published = {e["vid_name"]: e["label"] for f in ("Diving48_V2_train.json", "Diving48_V2_test.json")
                 for e in json.loads((folder / f).read_text())}
    assert all(r["label_id"] == published[r["video_id"]] and r["label"] == classes[r["label_id"]] for r in rows)


def test_real_kinetics400_validation_csv(real_meta):
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(real_meta / "kinetics400" / "kinetics-400_val.csv"),
                                            root=NO_VIDEOS))
    assert _counts(rows) == {"val": 19906}
    assert len(classes) == 400 and classes == sorted(classes) and classes[0] == "abseiling"
    r = rows[0]  # abseiling,0wR5jVB-WPk,417,427,val,0
    assert (r["video_id"], r["youtube_id"], r["label_id"]) == ("0wR5jVB-WPk_000417_000427", "0wR5jVB-WPk", 0)
    assert (r["source_path"], r["time_start"], r["time_end"]) == (f"{NO_VIDEOS}/0wR5jVB-WPk.mp4", 417, 427)


def test_real_kinetics_test_style_list_without_labels(real_meta, tmp_path):
    """The 2017 test CSV's layout (`youtube_id,time_start,time_end,split`), made from the real validation list."""
    with open(real_meta / "kinetics400" / "kinetics-400_val.csv", newline="") as f:
        records = list(csv.DictReader(f))[:500]
    with open(tmp_path / "kinetics_test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["youtube_id", "time_start", "time_end", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "split": "test"} for r in records)
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "kinetics_test.csv"), root=NO_VIDEOS))
    assert _counts(rows) == {"test": 500} and classes == []
    assert {(r["label"], r["label_id"]) for r in rows} == {("", -1)}


def test_real_minikinetics200_validation_ids_all_in_the_kinetics400_csv(real_meta):
    ids = (real_meta / "mini_kinetics200" / "val_ytid_list.txt").read_text().split()
    cfg = InputConfig(source="minikinetics", manifest=str(real_meta / "kinetics400" / "kinetics-400_val.csv"),
                      id_lists=[str(real_meta / "mini_kinetics200" / "val_ytid_list.txt")], root=NO_VIDEOS)
    rows, classes = read_source(cfg)
    assert len(ids) == len(set(ids)) == 5000
    assert _counts(rows) == {"val": 5000}  # every id found, none ambiguous, none duplicated
    assert {r["youtube_id"] for r in rows} == set(ids) and ids_in_several_windows(rows) == {}
    assert len(classes) == 200 and Counter(r["label"] for r in rows) == {c: 25 for c in classes}


def test_readers_read_the_same_rows_through_a_uri(real_meta):
    """input.manifest / id_lists / root as URIs: the published files copied to an fsspec `memory://` store
    (a real filesystem, in this process) read as from the local disk; the folder source lists it."""
    pytest.importorskip("fsspec")
    base = f"memory://debias-test-{uuid.uuid4().hex[:8]}"
    for folder in ("ucf101/ucfTrainTestlist", "hmdb51/testTrainMulti_7030_splits", "diving48", "kinetics400",
                   "mini_kinetics200"):
        for f in (real_meta / folder).iterdir():
            storage.write_bytes(f"{base}/{folder}/{f.name}", f.read_bytes())
    cases = [dict(source="ucf101", manifest="ucf101/ucfTrainTestlist", root="videos"),
             dict(source="hmdb51", manifest="hmdb51/testTrainMulti_7030_splits", root="videos"),
             dict(source="diving48", manifest="diving48", root="videos"),
             dict(source="kinetics", manifest="kinetics400", root="videos"),
             dict(source="minikinetics", manifest="kinetics400/kinetics-400_val.csv", root="videos",
                  id_lists=["mini_kinetics200/val_ytid_list.txt"])]
    for case in cases:
        def at(prefix, c=case):
            return InputConfig(**{k: ([f"{prefix}/{p}" for p in v] if k == "id_lists" else v if k == "source"
                                      else f"{prefix}/{v}") for k, v in c.items()})
        local_rows, local_classes = read_source(at(str(real_meta)))
        rows, classes = read_source(at(base))
        assert classes == local_classes and len(rows) == len(local_rows), case["source"]
        assert [r["video_id"] for r in rows] == [r["video_id"] for r in local_rows]
        assert rows[0]["source_path"] == f"{base}/videos/" + local_rows[0]["source_path"].split("/videos/", 1)[1]
    for name in ["jump/a.mp4", "jump/b.avi", "wave/c.mkv", "loose.mp4", "wave/notes.txt"]:
        storage.write_bytes(f"{base}/folder/{name}", b"x")
    rows, classes = read_source(InputConfig(root=f"{base}/folder"))
    assert classes == ["jump", "wave"]
    assert [(r["video_id"], r["error_code"]) for r in rows] == [("jump/a", ""), ("jump/b", ""), ("loose", "no_class_folder"),
                                                               ("wave/c", "")]
    assert all(storage.is_file(r["source_path"]) for r in rows)
    storage.delete(base)
