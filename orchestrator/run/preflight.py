"""What a spec needs from the machine and the cluster: files that exist, nodes that can hold its
workers. The spec module checks what the document says; the CLI calls these before anything starts.
"""
from __future__ import annotations

import os
from pathlib import Path

from workloads.data.cifar import CIFAR_FOLDERS

from orchestrator.experiment.messages import SpecError
from orchestrator.experiment.resolved import ExperimentSpec


def _fail(where: str, problem: str) -> None:
    raise SpecError(f"{where}: {problem}")


def check_inputs(spec: ExperimentSpec) -> None:
    """The files a spec names (data, imported checkpoints) exist: a one-line SpecError if not."""
    from workloads.data.imagefolder import class_folders, empty_class
    d = spec.data
    from orchestrator.location import is_uri
    if is_uri(d.root):
        _check_remote_root(spec)
        return _check_models(spec)
    root = Path(d.root).expanduser()
    if d.dataset in CIFAR_FOLDERS and not d.download:
        title, folder = CIFAR_FOLDERS[d.dataset]
        if not (root / folder).is_dir():
            _fail("data.root", f"no {title} files in {root} (expected {root / folder}/); put torchvision's "
                               f"{title} files there, or set data.download: true on a machine with internet")
    if d.text:
        _check_models(spec)
        _check_corpus(spec)
        return _check_tasks(spec)
    if d.streamed:
        classes = class_folders(root / "val")
        if not classes:
            _fail("data.root", f"no ImageNet-style folder {root / 'val'}/<class>/<image> (point data.root at the "
                               f"folder that holds val/ and train/)")
        if len(classes) != d.num_classes:
            _fail("data.num_classes", f"is {d.num_classes}, but {root / 'val'} holds {len(classes)} class folders")
        train = class_folders(root / "train")
        if spec.studies.study("gradients") and not train:
            _fail("studies.gradients", f"draws training images, and {root / 'train'} holds no class folders")
        if train and train != classes:
            _fail("data.root", f"{root / 'train'} and {root / 'val'} hold different class folders")
        for split in ("val", "train") if train else ("val",):
            empty = empty_class(root / split)
            if empty:
                _fail("data.root", f"{root / split / empty} holds no image (every class folder needs one)")
    _check_models(spec)


def _check_remote_root(spec: ExperimentSpec) -> None:
    """A data root on object storage: reachable, and holding the dataset's folder (each node copies it)."""
    from orchestrator.location import Location, LocationError
    d = spec.data
    try:
        root = Location.of(d.root)
        root.check_reachable()
        folder = root / CIFAR_FOLDERS[d.dataset][1] if d.dataset in CIFAR_FOLDERS else root / "val"
        if not d.download and not folder.is_dir():
            _fail("data.root", f"nothing under {folder} (put the dataset's files there)")
    except LocationError as e:
        _fail("data.root", str(e))


def _check_corpus(spec: ExperimentSpec) -> None:
    """For every model, the text tokenises into at least one sequence, with its tokenizer (its own folder's unless
    data.tokenizer names one), into ids the model has embeddings for; a named tokenizer whose vocabulary is not
    that of a model's own tokenizer is refused (the model would read another text than the one it was trained on)."""
    from types import SimpleNamespace

    from workloads.data import DataNotFound
    from workloads.data.text import (TextDataError, check_vocabulary, holds_tokenizer, load_text_corpus,
                                     load_tokenizer, vocabulary_difference)
    d = spec.data
    corpora = {}   # tokenizer folder -> (tokenizer, the corpus it cuts)
    for i, m in enumerate(spec.models):
        folder = d.tokenizer_of(m.run_id)
        where = "data.tokenizer" if d.tokenizer else f"models[{i}].checkpoint"
        if folder not in corpora:
            try:
                tokenizer = load_tokenizer(folder)
            except (DataNotFound, TextDataError) as e:
                _fail(where, f"{e}{'' if d.tokenizer else '; name the tokenizer to use with data.tokenizer'}")
            try:
                corpora[folder] = tokenizer, load_text_corpus(d.resolved_root, folder, d.sequence_length,
                                                              column=d.column)
            except (DataNotFound, TextDataError) as e:
                _fail(f"data.{getattr(e, 'field', '') or 'root'}", str(e))
        tokenizer, data = corpora[folder]
        try:
            check_vocabulary(SimpleNamespace(vocab_size=m.net_config.num_classes), data)
        except TextDataError as e:
            _fail(where, f"{e} (models[{i}], {m.label})")
        own = Path(m.checkpoint).expanduser().resolve()
        if d.tokenizer and str(own) != folder and holds_tokenizer(own):
            try:
                difference = vocabulary_difference(tokenizer, load_tokenizer(own))
            except TextDataError:   # its own cannot be read: the one named replaces it
                continue
            if difference:
                _fail("data.tokenizer", f"{folder} does not have the vocabulary of models[{i}]'s own tokenizer "
                                        f"({own}): {difference}; leave data.tokenizer out to score each model "
                                        f"with its own")


def _check_tasks(spec: ExperimentSpec) -> None:
    """A tasks study's tasks exist, read local files only, and ask for loglikelihoods (``workloads.tasks.check_tasks``,
    offline), and each of its runs' requests are cut by the model's own tokenizer (``check_tokenizer``): an unknown
    task, one that would reach a hub, a generation task, a task YAML that does not parse or a tokenizer that is not
    the model's is refused in one line here, before Ray starts."""
    study = spec.studies.study("tasks")
    if study is None:
        return
    from workloads.data.text import TextDataError, holds_tokenizer, load_tokenizer
    from workloads.tasks import TaskError, check_tasks, check_tokenizer

    from orchestrator.experiment.networks import language_model_config
    try:
        check_tasks(study.tasks())
    except TaskError as e:
        _fail("studies.tasks", str(e))
    d = spec.data
    for i, m in enumerate(spec.models):   # the tokenizer that cuts a run's requests must be its model's
        if m.run_id not in study.runs:
            continue
        folder, own = d.tokenizer_of(m.run_id), Path(m.checkpoint).expanduser().resolve()
        try:
            theirs = load_tokenizer(own) if str(own) != folder and holds_tokenizer(own) else None
        except TextDataError:   # its own cannot be read: the one named replaces it
            theirs = None
        try:
            check_tokenizer(load_tokenizer(folder), language_model_config(m.net_config.hf_config), theirs)
        except TaskError as e:
            _fail("data.tokenizer" if d.tokenizer else f"models[{i}].checkpoint", f"{e} (models[{i}], {m.label})")


def _check_models(spec: ExperimentSpec) -> None:
    from workloads.models import AdapterError, CheckpointError
    for i, m in enumerate(spec.models):
        path = Path(m.checkpoint).expanduser()
        if m.net_config.arch == "hf":   # a Hugging Face folder: its config, model type and weights
            from workloads.models.adapters.hf_loading import read_config
            try:
                read_config(path)
            except (CheckpointError, AdapterError) as e:
                _fail(f"models[{i}].checkpoint", str(e))
            continue
        if not path.is_file():
            _fail(f"models[{i}].checkpoint", f"no such file {m.checkpoint}")
        if not os.access(path, os.R_OK):
            _fail(f"models[{i}].checkpoint", f"{m.checkpoint} is not readable (permissions)")


def check_resources(spec: ExperimentSpec, nodes: list[dict[str, float]],
                    parts: tuple[str, ...] = ("training", "studies")) -> None:
    """Every trial and evaluator fits on some node (Ray would otherwise wait forever, silently).

    ``nodes``: the resources of each live node, as ``ray.nodes()[i]["Resources"]``; ``parts``:
    what the command will run.
    """
    asks = []
    if spec.training.trials and "training" in parts:
        asks.append(("training.resources", spec.training.resources))
    if spec.studies.studies and "studies" in parts:
        asks.append(("studies.evaluators", spec.studies.evaluators))
    for where, ask in asks:
        cpu, gpu = ask.cpu, ask.gpu
        if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
            continue
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "none"
        kind = "gpu" if gpu and not any(n.get("GPU", 0) >= gpu for n in nodes) else "cpu"
        _fail(f"{where}.{kind}", f"asks for {cpu:g} CPU and {gpu:g} GPU per worker, and no node of the cluster has "
                                 f"that (nodes: {have}); start such workers or lower the request")
