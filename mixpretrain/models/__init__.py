"""mixpretrain.models"""
