"""GPU dispatch for the production (Kubernetes) profile.

Per-step k8s config must sit on the asset's ``op_tags``: ``dagster-k8s/config`` on a job or run does not
reach step pods. In the embedded default these tags are inert and the step runs on CPU.
"""

GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
            }
        },
        # A toleration lets the pod onto GPU nodes; the selector makes it go there.
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}
