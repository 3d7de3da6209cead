"""runtime/cgroups"""
