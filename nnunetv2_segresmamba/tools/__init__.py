"""Tools around the stock nnU-Net CLI: the synthetic dataset (``synthetic``), running the CLI
and nnU-Net's evaluation (``pipeline``), the demo (``demo``), tables and figures of reports
(``reporting``), the names of the files in fold and sweep folders (``layout``), reading
checkpoints (``checkpoints``) and a cascade for datasets too small for nnU-Net to plan one
(``cascade``)."""
