"""vidseg_ros: online video semantic segmentation with temporal feature state.

The core (models, motion, runtime, data, metrics) never imports rclpy; ROS code lives in ``vidseg_ros.ros``.
"""

__version__ = "0.1.0"
