"""ALMA (Iqbal et al. 2022): an allocator assigning agents to subtasks (``allocator``) above
attention-QMIX agents masked to their subtask (``aqmix``). ``family`` builds the hierarchy."""
