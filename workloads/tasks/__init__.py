"""lm-evaluation-harness tasks as a library: tasks checked and loaded offline (loading.py), their requests
tokenised as lm-eval's HF model would (requests.py), and every plan's scores from one engine pass through
lm-eval's own metrics (scoring.py). lm_eval is imported inside functions, so importing this costs nothing."""
from workloads.tasks.config import TaskConfig, TaskError
from workloads.tasks.loading import TaskSummary, check_tasks
from workloads.tasks.requests import TaskRequests, check_tokenizer, context_length, task_requests
from workloads.tasks.scoring import TaskMetric, TaskSample, TaskScores, score_tasks

__all__ = ["TaskConfig", "TaskError", "TaskMetric", "TaskRequests", "TaskSample", "TaskScores", "TaskSummary",
           "check_tasks", "check_tokenizer", "context_length", "score_tasks", "task_requests"]
