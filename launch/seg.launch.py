"""Launch the vidseg segmentation node.

    ros2 launch vidseg_ros seg.launch.py image:=/camera/image_raw
    ros2 launch vidseg_ros seg.launch.py checkpoint:=twnet_mobilenetv2_synth.pt device:=cuda
    ros2 launch vidseg_ros seg.launch.py image:=/camera/image_raw transport:=compressed

Everything else lives in the parameter file (``config:=...``); the arguments below override it only when given.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# launch argument -> node parameter; an empty argument leaves the config file's value alone.
OVERRIDES = {
    "checkpoint": "model.checkpoint",
    "device": "model.device",
    "backend": "model.backend",
    "precision": "model.precision",
    "reliability": "qos.reliability",
    "transport": "input.transport",
    "realtime": "realtime",
}


def _node(context, *args, **kwargs):
    overrides = {}
    for arg, param in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context)
        if value:
            overrides[param] = value.lower() == "true" if param == "realtime" else value
    return [
        Node(
            package="vidseg_ros",
            executable="seg_node",
            name="vidseg",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("config"), overrides],
            remappings=[("image", LaunchConfiguration("image"))],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    default_config = [FindPackageShare("vidseg_ros"), "/config/seg.yaml"]
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image", default_value="/camera/image_raw", description="Input image topic."
            ),
            DeclareLaunchArgument("config", default_value=default_config, description="Parameter file."),
            DeclareLaunchArgument("namespace", default_value="", description="Node namespace."),
            DeclareLaunchArgument(
                "checkpoint",
                default_value="",
                description="Checkpoint file or shipped name (selects the method).",
            ),
            DeclareLaunchArgument("device", default_value="", description="auto | cpu | cuda."),
            DeclareLaunchArgument(
                "backend", default_value="", description="auto | torch | tensorrt | onnxruntime."
            ),
            DeclareLaunchArgument("precision", default_value="", description="fp32 | fp16 | bf16."),
            DeclareLaunchArgument("reliability", default_value="", description="best_effort | reliable."),
            DeclareLaunchArgument(
                "transport",
                default_value="",
                description="raw | compressed (subscribes to <image>/compressed).",
            ),
            DeclareLaunchArgument("realtime", default_value="", description="false processes every frame."),
            OpaqueFunction(function=_node),
        ]
    )
