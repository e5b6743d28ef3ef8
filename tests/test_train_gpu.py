"""configs/train_gpu.json: the PraNet protocol's size and batch, a longer schedule, AMP and worker processes on a GPU;
checked here on the CPU with a tiny budget."""

from monai.bundle import ConfigParser

from tests.helpers import CONFIGS, FAST, make_rectangles_dataset, run_bundle


def test_the_gpu_recipe_sets_the_protocol_budget():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_gpu.json")])
    parser.update({"device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("image_size") == [352, 352]
    assert (parser.get_parsed_content("batch_size"), parser.get_parsed_content("epochs")) == (16, 100)
    assert parser.get_parsed_content("train#dataloader#num_workers") == 8
    assert parser.get_parsed_content("amp") is False  # AMP only on CUDA
    parser.update({"device": "$torch.device('cuda:0')"})
    assert parser.get_parsed_content("amp") is True


def test_the_gpu_recipe_trains_on_the_cpu_with_a_tiny_budget(tmp_path):
    dataset = make_rectangles_dataset(tmp_path / "data")
    run_bundle(["train.json", "train_gpu.json"], bundle_root=str(tmp_path), dataset_dir=str(dataset), epochs=1, **FAST)
    assert (tmp_path / "models" / "stage1" / "model.pt").is_file()
