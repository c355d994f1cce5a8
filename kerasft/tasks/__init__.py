"""Task objects: everything that differs by input modality and output type.

    task = registry.for_config(run_config)   # ImageTask or TextTask (or a task's own),
    train, val = task.index(seed)            # holding an Output
    task, model = task.build_model(train)
    dataset = task.pipelines(train, val)

`base` declares `Task` and `Output` (every method used outside this package); `image` and
`text` are the modalities; each folder is one kind of output (`classify/`: multiclass,
multilabel, regression; `multitask/`, `tagging/`, `segmentation/`) with files of fixed
roles: settings, data (no TensorFlow), graph, output, task, serving, report. `registry`
maps task names to their classes; `settings` composes each task's settings group into the
run's config. Nothing else in kerasft names a task.
"""
