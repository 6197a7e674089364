"""Dataset sources: each reader on small files in the dataset's published format, written here."""

import json

import pytest

from debias.config import ConfigError, load_config
from debias.curate import PreprocessConfig
from debias.sources import InputConfig, read_source


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
        "abseiling,backwards,20,10,train,0\n")
    (csv_dir / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                          "zumba,trimmedAAAA,10,20,val\n")  # the same id twice
    rows, classes = read_source(InputConfig(source="kinetics", manifest=str(csv_dir), root=str(videos)))
    by_id = _by_id(rows)
    assert classes == ["abseiling", "arm wrestling"]  # labels of good rows only, sorted
    a = by_id["trimmedAAAA"]
    assert a["source_path"].endswith("trimmedAAAA_000010_000020.mp4") and (a["time_start"], a["time_end"]) == (0, 10)
    b = by_id["wholeBBBBBB"]
    assert b["source_path"].endswith("wholeBBBBBB.mp4") and (b["time_start"], b["time_end"]) == (30, 40)
    assert b["label_id"] == 1 and b["youtube_id"] == "wholeBBBBBB" and b["error"] == ""
    assert by_id["notYetThere"]["error"] == ""  # not downloaded yet: the decode (or download) stage decides
    bad = [r for r in rows if r["error_code"] == "malformed_manifest_row"]
    assert len(bad) == 3 and all(r["error_stage"] == "source" and "train.csv:" in r["error"] for r in bad)
    assert any("bad time window" in r["error"] for r in bad) and any("no youtube_id" in r["error"] for r in bad)
    assert any("time_end 10.0 <= time_start 20.0" in r["error"] for r in bad)
    dup = [r for r in rows if r["error_code"] == "duplicate_id"]
    assert len(dup) == 1 and dup[0]["label"] == "zumba"
    assert len(rows) == 7  # every line is a row, good or not


def test_kinetics_csv_without_required_columns_fails_before_work(tmp_path):
    (tmp_path / "k.csv").write_text("youtube_id,time_start\nabc,0\n")
    with pytest.raises(ValueError, match=r"k.csv: not a Kinetics CSV, lacks columns \['label', 'split'\]"):
        read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "k.csv")))
    with pytest.raises(FileNotFoundError, match="input.manifest"):
        read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "missing.csv")))


def test_minikinetics_joins_id_lists_with_the_csv_and_reports_missing_ids(tmp_path):
    (tmp_path / "kinetics_train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                 "abseiling,aaaaaaaaaaa,1,11,train\n"
                                                 "zumba,bbbbbbbbbbb,2,12,train\n"
                                                 "yoga,ccccccccccc,3,13,val\n"
                                                 "unused,ddddddddddd,0,10,train\n")
    (tmp_path / "train_ytid_list.txt").write_text("aaaaaaaaaaa\nbbbbbbbbbbb\nmissing0000\n")
    (tmp_path / "val_ytid_list.txt").write_text("ccccccccccc\n")
    cfg = InputConfig(source="minikinetics", manifest=str(tmp_path / "kinetics_train.csv"),
                      id_lists=[str(tmp_path / "train_ytid_list.txt"), str(tmp_path / "val_ytid_list.txt")])
    rows, classes = read_source(cfg)
    by_id = _by_id(rows)
    assert set(by_id) == {"aaaaaaaaaaa", "bbbbbbbbbbb", "missing0000", "ccccccccccc"}  # ddd... is not in Mini-Kinetics
    assert classes == ["abseiling", "yoga", "zumba"]
    assert by_id["ccccccccccc"]["split"] == "val" and by_id["ccccccccccc"]["time_start"] == 3
    missing = by_id["missing0000"]
    assert missing["error_code"] == "not_in_manifest" and "train_ytid_list.txt:3" in missing["error"]
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
    entries = [{"vid_name": "_8Vy3dlHg2w_00000", "label": 0, "start_frame": 0, "end_frame": 52},
               {"vid_name": "_8Vy3dlHg2w_00001", "label": 47, "start_frame": 0, "end_frame": 60},
               {"vid_name": "no_label", "start_frame": 0, "end_frame": 10},
               {"vid_name": "bad_range", "label": 3, "start_frame": 9, "end_frame": 9}]
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(entries))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "t1", "label": 5, "start_frame": 0,
                                                                 "end_frame": 30}]))
    rows, classes = read_source(InputConfig(source="diving48", manifest=str(tmp_path), root=str(tmp_path / "rgb")))
    by_id = _by_id(rows)
    assert classes == ["00", "05", "47"]
    assert by_id["_8Vy3dlHg2w_00001"]["label"] == "47" and by_id["t1"]["split"] == "test"
    assert by_id["t1"]["source_path"] == str(tmp_path / "rgb" / "t1.mp4")
    assert "KeyError" in by_id["no_label"]["error"] and "Diving48_V2_train.json[2]" in by_id["no_label"]["error"]
    assert "end_frame 9 <= start_frame 9" in by_id["bad_range"]["error"]
    (tmp_path / "Diving48_V2_test.json").write_text("[{")
    with pytest.raises(ValueError, match="Diving48_V2_test.json: not valid JSON"):
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
    with pytest.raises(ConfigError, match="input.id_lists: source=minikinetics needs"):
        load_config(PreprocessConfig, None, ["input.source=minikinetics", "input.manifest=k.csv"])
    with pytest.raises(ConfigError, match="input.source: must be one of"):
        load_config(PreprocessConfig, None, ["input.source=kinetics900"])
    with pytest.raises(ConfigError, match="download.enabled: downloads YouTube ids; input.source=folder"):
        load_config(PreprocessConfig, None, ["input.root=x", "download.enabled=true"])
